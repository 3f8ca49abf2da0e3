"""Reading the user's videos and the frame arithmetic shared by builders and pipelines.

`read_video` decodes mp4 / webm / mov / mkv / avi (through the ffmpeg binary that imageio-ffmpeg
ships), gif (Pillow, honouring per-frame durations) and folders of frame images. It returns
every frame with its timestamp; `pick_frames` then chooses frames by timestamp for a target
fps, and `resize_and_crop` / `resize_frames` fix the size.

Bounded memory. Before decoding, the container's header (`probe_video`: frame size, duration,
streams) or the first image says how big the decoded frames will be. Frames larger than
`max_frame_pixels` (default MAX_FRAME_PIXELS), or a stretch whose frames would exceed
`max_bytes` (default MAX_DECODE_BYTES) in memory, are decoded scaled down (by ffmpeg, or per
image), never below `min_size` (the size the clips are cropped to), so a huge video is read
small instead of exhausting memory. If even that would exceed `max_bytes`, reading stops there
and `DecodeNotes.cut_at_seconds` says where. An empty file, a file without a video stream (an
audio file named .mp4) or an undecodable one raises `VideoReadError` with the reason.
"""
import dataclasses
import math
import os
import re
import subprocess
from typing import Optional, Tuple

from absl import logging
import numpy as np
from PIL import Image, ImageSequence

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FPS_FILE = "fps.txt"  # optional, inside a folder of frames: its frame rate
MAX_FRAME_PIXELS = 4096 * 4096  # larger frames are decoded scaled down to this many pixels
MAX_DECODE_BYTES = 4 << 30      # decoded frames of one video held in memory at most
PROBE_TIMEOUT_S = 60.0


class VideoReadError(Exception):
  """A video that cannot be decoded (corrupt, empty, unsupported)."""


@dataclasses.dataclass
class DecodeNotes:
  """What `decode_video` changed to stay within its memory bounds (None: nothing)."""
  source_size: Optional[Tuple[int, int]] = None   # (width, height) in the file
  decoded_size: Optional[Tuple[int, int]] = None  # (width, height) of the returned frames
  cut_at_seconds: Optional[float] = None          # reading stopped at max_bytes here

  @property
  def resized(self) -> bool:
    return self.source_size is not None and self.source_size != self.decoded_size


def probe_video(path: str) -> dict:
  """The container's header, read by ffmpeg without decoding a frame.

  Returns {'width', 'height', 'fps', 'duration' (seconds)} of the first video stream (cover
  art, an 'attached pic', is not one); None where the header does not say.

  Raises:
    VideoReadError: ffmpeg cannot open the file, or it holds no video stream.
  """
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path]
  try:
    out = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as e:
    raise VideoReadError(f"ffmpeg did not read the header within {PROBE_TIMEOUT_S:.0f} s") from e
  text = out.stderr.decode("utf-8", "replace")
  streams = [l.strip() for l in text.splitlines() if l.lstrip().startswith("Stream #")]
  if not streams:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    raise VideoReadError("not a video ffmpeg can open" + (f": {lines[-1]}" if lines else ""))
  video = [l for l in streams if ": Video:" in l and "attached pic" not in l]
  if not video:
    kinds = sorted({k.lower() for k in re.findall(r": (\w+):", " ".join(streams))})
    raise VideoReadError(f"no video stream: the file holds only {'/'.join(kinds) or 'other'} "
                         "(an audio file named like a video?)")
  line = video[0].split(": Video:", 1)[1]
  size = re.search(r", (\d+)x(\d+)\b", line)
  fps = re.search(r" (\d+(?:\.\d+)?) (?:fps|tbr)\b", line)
  duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
  return {"width": int(size.group(1)) if size else None,
          "height": int(size.group(2)) if size else None,
          "fps": float(fps.group(1)) if fps and float(fps.group(1)) > 0 else None,
          "duration": (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60
                       + float(duration.group(3))) if duration else None}


def decode_scale(width: int, height: int, num_frames: Optional[int], *,
                 min_size: Optional[Tuple[int, int]] = None,
                 max_frame_pixels: int = MAX_FRAME_PIXELS,
                 max_bytes: int = MAX_DECODE_BYTES) -> float:
  """The factor (<= 1) to decode `width` x `height` frames at within the memory bounds.

  At most `max_frame_pixels` per frame, and `num_frames` (when known) of them within
  `max_bytes`; but never smaller than covering `min_size` = (height, width), the clips' size.

  Raises:
    VideoReadError: covering `min_size` needs frames above `max_frame_pixels`.
  """
  scale = 1.0
  if width * height > max_frame_pixels:
    scale = math.sqrt(max_frame_pixels / (width * height))
  if num_frames and num_frames * width * height * 3 * scale ** 2 > max_bytes:
    scale = math.sqrt(max_bytes / (num_frames * width * height * 3))
  if min_size:
    cover = min(1.0, max(min_size[0] / height, min_size[1] / width))
    if scale < cover:
      scale = cover
      if (width * scale) * (height * scale) > max_frame_pixels:
        raise VideoReadError(f"{width}x{height} frames cannot cover {min_size[1]}x{min_size[0]} "
                             f"within {max_frame_pixels} pixels per frame (extreme aspect)")
  return scale


def _scaled(width, height, scale):
  return max(1, math.ceil(width * scale - 1e-9)), max(1, math.ceil(height * scale - 1e-9))


def _to_rgb(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = np.repeat(frame[..., None], 3, axis=-1)
  if frame.shape[-1] == 4:
    frame = frame[..., :3]
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise VideoReadError(f"unexpected frame shape {frame.shape}")
  return frame.astype(np.uint8)


def _limit(max_output_frames, target_fps, source_rate):
  """Seconds of source needed for `max_output_frames` at min(target_fps, source_rate)."""
  if not max_output_frames or not target_fps:
    return None
  return max_output_frames / min(target_fps, source_rate) + 1.0 / source_rate


class _Budget:
  """Counts the decoded bytes kept; says when one more frame would pass `max_bytes`."""

  def __init__(self, max_bytes):
    self.max_bytes, self.used = max_bytes, 0

  def full(self, frame_bytes):
    if self.used and self.used + frame_bytes > self.max_bytes:
      return True
    self.used += frame_bytes
    return False


def _read_ffmpeg(path, max_output_frames, target_fps, limits, notes):
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  if os.path.getsize(path) == 0:
    raise VideoReadError("empty file (0 bytes)")
  header = probe_video(path)
  output_params = []
  if header["width"] and header["height"]:
    w, h = header["width"], header["height"]
    # The frames to hold: the whole video, or the stretch the clips need. Without a rate in the
    # header 60 fps is assumed (reading enforces the byte budget exactly anyway).
    rate = header["fps"] or 60.0
    seconds = header["duration"] or math.inf
    needed = _limit(max_output_frames, target_fps, rate)
    if needed is not None:
      seconds = min(seconds, needed)
    num_frames = math.ceil(seconds * rate) + 1 if math.isfinite(seconds) else None
    scale = decode_scale(w, h, num_frames, **limits)
    notes.source_size = notes.decoded_size = (w, h)
    if scale < 1.0:
      output_params = ["-vf", f"scale=w='ceil(iw*{scale:.6f})':h='ceil(ih*{scale:.6f})'"
                              ":flags=area"]
    # ffmpeg stops by itself one frame past what reading can keep (the budget, or the stretch
    # the clips need), instead of decoding on until it is killed.
    out_w, out_h = _scaled(w, h, scale)
    cap = limits["max_bytes"] // (out_w * out_h * 3) + 1
    if needed is not None and header["fps"]:
      cap = min(cap, math.ceil(needed * header["fps"]) + 3)
    output_params += ["-frames:v", str(max(cap, 2))]
  frames = []
  budget = _Budget(limits["max_bytes"])
  gen = imageio_ffmpeg.read_frames(path, output_params=output_params)
  try:
    meta = next(gen)
    fps = float(meta.get("fps") or 0.0)
    if not fps > 0:
      raise VideoReadError("no frame rate in the container")
    width, height = meta["size"]
    notes.decoded_size = (width, height)
    max_seconds = _limit(max_output_frames, target_fps, fps)
    for data in gen:
      if max_seconds is not None and len(frames) / fps > max_seconds:
        break
      if budget.full(len(data)):
        notes.cut_at_seconds = len(frames) / fps
        break
      frames.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
  finally:
    gen.close()
  return frames, np.arange(len(frames)) / fps


def _shrink(image, size):
  """`image` (PIL, RGB) resized to `size` = (width, height) when that differs."""
  return image if image.size == size else image.resize(size, Image.Resampling.BOX)


def _read_gif(path: str, default_fps: float, limits, notes):
  frames, times, t = [], [], 0.0
  budget = _Budget(limits["max_bytes"])
  with Image.open(path) as im:
    notes.source_size = im.size
    scale = decode_scale(*im.size, getattr(im, "n_frames", 1), **limits)
    notes.decoded_size = size = _scaled(*im.size, scale)
    for frame in ImageSequence.Iterator(im):
      if budget.full(size[0] * size[1] * 3):
        notes.cut_at_seconds = t
        break
      frames.append(_to_rgb(_shrink(frame.convert("RGB"), size)))
      times.append(t)
      duration_ms = frame.info.get("duration") or 1000.0 / default_fps
      t += float(duration_ms) / 1000.0
  return frames, np.array(times)


def _read_frame_folder(path: str, default_fps: float, max_output_frames, target_fps, limits,
                       notes):
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
  fps = default_fps
  fps_path = os.path.join(path, FPS_FILE)
  if os.path.exists(fps_path):
    with open(fps_path) as f:
      fps = float(f.read().strip())
  max_seconds = _limit(max_output_frames, target_fps, fps)
  if max_seconds is not None:
    names = names[:int(max_seconds * fps) + 2]
  frames, size = [], None
  budget = _Budget(limits["max_bytes"])
  for name in names:
    with Image.open(os.path.join(path, name)) as im:  # the header only, until converted
      if size is None:
        notes.source_size = im.size
        notes.decoded_size = size = _scaled(*im.size,
                                            decode_scale(*im.size, len(names), **limits))
      elif im.size != notes.source_size:
        raise VideoReadError("frame images of different sizes")
      if budget.full(size[0] * size[1] * 3):
        notes.cut_at_seconds = len(frames) / fps
        break
      frames.append(_to_rgb(_shrink(im.convert("RGB"), size)))
  return frames, np.arange(len(frames)) / fps


def decode_video(path: str, *, default_fps: float, target_fps: Optional[float] = None,
                 max_output_frames: Optional[int] = None,
                 min_size: Optional[Tuple[int, int]] = None,
                 max_frame_pixels: Optional[int] = None,
                 max_bytes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, DecodeNotes]:
  """`read_video`, also returning the `DecodeNotes` of what the memory bounds changed."""
  limits = dict(min_size=min_size,
                max_frame_pixels=int(max_frame_pixels or MAX_FRAME_PIXELS),
                max_bytes=int(max_bytes or MAX_DECODE_BYTES))
  notes = DecodeNotes()
  try:
    if os.path.isdir(path):
      frames, times = _read_frame_folder(path, default_fps, max_output_frames, target_fps,
                                         limits, notes)
    elif path.lower().endswith(".gif"):
      frames, times = _read_gif(path, default_fps, limits, notes)
    else:
      frames, times = _read_ffmpeg(path, max_output_frames, target_fps, limits, notes)
  except VideoReadError:
    raise
  except Exception as e:  # any decoder failure: corrupt, truncated, unsupported
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    reason = lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "") if lines else ""
    raise VideoReadError(f"{type(e).__name__}: {reason}") from e
  if not frames:
    raise VideoReadError("no frames")
  if any(f.shape != frames[0].shape for f in frames):
    raise VideoReadError("frames of different sizes")
  return np.stack(frames), np.asarray(times, np.float64), notes


def read_video(path: str, *, default_fps: float, target_fps: Optional[float] = None,
               max_output_frames: Optional[int] = None,
               min_size: Optional[Tuple[int, int]] = None,
               max_frame_pixels: Optional[int] = None,
               max_bytes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Decodes a whole video (or as much as `max_output_frames` need) into bounded memory.

  Args:
    path: a video file or a folder of frame images (sorted by name; `fps.txt` gives the rate).
    default_fps: frame rate for frame folders without `fps.txt` and gif frames without a
      duration.
    target_fps, max_output_frames: when both are given, reading stops once the video covers
      `max_output_frames` frames at min(target_fps, source fps).
    min_size: (height, width) that frames scaled down for memory must still cover.
    max_frame_pixels, max_bytes: the memory bounds (default MAX_FRAME_PIXELS,
      MAX_DECODE_BYTES): larger frames are decoded scaled down, and reading stops (with a
      warning) where the frames kept would pass max_bytes.

  Returns:
    frames uint8 [N, H, W, 3] and timestamps float64 [N] in seconds (increasing, from 0).

  Raises:
    VideoReadError: the file is empty, has no video stream, cannot be decoded or has no frames
      (never a partial result).
  """
  frames, times, notes = decode_video(
      path, default_fps=default_fps, target_fps=target_fps,
      max_output_frames=max_output_frames, min_size=min_size,
      max_frame_pixels=max_frame_pixels, max_bytes=max_bytes)
  if notes.resized:
    logging.warning("%s: %dx%d frames decoded at %dx%d to bound memory.", path,
                    *notes.source_size, *notes.decoded_size)
  if notes.cut_at_seconds is not None:
    logging.warning("%s: read only the first %.2f s: more would pass %d bytes of decoded frames.",
                    path, notes.cut_at_seconds, max_bytes or MAX_DECODE_BYTES)
  return frames, times


def source_fps(times: np.ndarray, default_fps: float) -> float:
  """The average frame rate of timestamps (default_fps for a single frame)."""
  if len(times) < 2 or times[-1] <= times[0]:
    return float(default_fps)
  return float((len(times) - 1) / (times[-1] - times[0]))


def pick_frames(times: np.ndarray, *, fps: float, num_frames: int,
                start: float = 0.0) -> np.ndarray:
  """Indices of the frames shown at times start + k / fps, k < num_frames ([num_frames] int).

  A frame is shown from its timestamp until the next one's, so this picks the last frame whose
  timestamp is <= the target time (nearest-in-time up to half a source frame of jitter).
  """
  targets = start + np.arange(num_frames) / fps
  eps = 1e-6  # float round-off in timestamps
  idx = np.searchsorted(times, targets + eps, side="right") - 1
  return np.clip(idx, 0, len(times) - 1)


def clip_starts(duration: float, *, clip_seconds: float, max_clips: int) -> list:
  """Start times of up to `max_clips` non-overlapping clips (0 = as many as fit)."""
  if clip_seconds > duration + 1e-6:
    return []
  count = int((duration + 1e-6) // clip_seconds) if clip_seconds > 0 else 1
  if max_clips > 0:
    count = min(count, max_clips)
  return [k * clip_seconds for k in range(max(count, 1))]


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes uint8 [N, h, w, C] frames to [N, height, width, C].

  Integer-factor downsampling averages whole blocks exactly (each output pixel is the rounded
  mean of its (h / height) x (w / width) block); any other change uses antialiased bicubic.
  """
  n, h, w, c = frames.shape
  if (h, w) == (height, width):
    return frames
  if h % height == 0 and w % width == 0:
    fh, fw = h // height, w // width
    blocks = frames.reshape(n, height, fh, width, fw, c).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)
  out = np.empty((n, height, width, c), np.uint8)
  for i in range(n):
    out[i] = np.asarray(Image.fromarray(frames[i]).resize((width, height),
                                                           Image.Resampling.BICUBIC))
  return out


def resize_and_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Scales uint8 [N, h, w, 3] so it covers height x width, then centre-crops to it."""
  h, w = frames.shape[1:3]
  scale = max(height / h, width / w)
  new_h, new_w = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
  frames = resize_frames(frames, new_h, new_w)
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return frames[:, top:top + height, left:left + width]
