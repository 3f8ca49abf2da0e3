"""Reading the user's videos and the frame arithmetic shared by builders and pipelines.

`read_video` decodes mp4 / webm / mov / mkv / avi (through imageio's ffmpeg plugin, with the
ffmpeg binary that imageio-ffmpeg ships), gif (Pillow, honouring per-frame durations) and
folders of frame images. It returns every frame with its timestamp; `pick_frames` then chooses
frames by timestamp for a target fps, and `resize_and_crop` / `resize_frames` fix the size.
"""
import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageSequence

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FPS_FILE = "fps.txt"  # optional, inside a folder of frames: its frame rate


class VideoReadError(Exception):
  """A video that cannot be decoded (corrupt, empty, unsupported)."""


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


def _read_ffmpeg(path: str, max_output_frames, target_fps):
  import imageio  # pylint: disable=g-import-not-at-top
  frames = []
  # Iterate: len() of an ffmpeg reader may be "infinite" and list(reader) preallocates it.
  with imageio.get_reader(path, format="FFMPEG") as reader:
    fps = float(reader.get_meta_data().get("fps") or 0.0)
    if not fps > 0:
      raise VideoReadError("no frame rate in the container")
    max_seconds = _limit(max_output_frames, target_fps, fps)
    for frame in reader:
      if max_seconds is not None and len(frames) / fps > max_seconds:
        break
      frames.append(_to_rgb(frame))
  return frames, np.arange(len(frames)) / fps


def _read_gif(path: str, default_fps: float):
  frames, times, t = [], [], 0.0
  with Image.open(path) as im:
    for frame in ImageSequence.Iterator(im):
      frames.append(_to_rgb(frame.convert("RGB")))
      times.append(t)
      duration_ms = frame.info.get("duration") or 1000.0 / default_fps
      t += float(duration_ms) / 1000.0
  return frames, np.array(times)


def _read_frame_folder(path: str, default_fps: float, max_output_frames, target_fps):
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
  fps = default_fps
  fps_path = os.path.join(path, FPS_FILE)
  if os.path.exists(fps_path):
    with open(fps_path) as f:
      fps = float(f.read().strip())
  max_seconds = _limit(max_output_frames, target_fps, fps)
  if max_seconds is not None:
    names = names[:int(max_seconds * fps) + 2]
  frames = []
  for name in names:
    with Image.open(os.path.join(path, name)) as im:
      frames.append(_to_rgb(im.convert("RGB")))
  if frames and any(f.shape != frames[0].shape for f in frames):
    raise VideoReadError("frame images of different sizes")
  return frames, np.arange(len(frames)) / fps


def read_video(path: str, *, default_fps: float, target_fps: Optional[float] = None,
               max_output_frames: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Decodes a whole video (or as much as `max_output_frames` need) into memory.

  Args:
    path: a video file or a folder of frame images (sorted by name; `fps.txt` gives the rate).
    default_fps: frame rate for frame folders without `fps.txt` and gif frames without a
      duration.
    target_fps, max_output_frames: when both are given, reading stops once the video covers
      `max_output_frames` frames at min(target_fps, source fps) (gifs are read whole).

  Returns:
    frames uint8 [N, H, W, 3] and timestamps float64 [N] in seconds (increasing, from 0).

  Raises:
    VideoReadError: the file cannot be decoded or has no frames (never a partial result).
  """
  try:
    if os.path.isdir(path):
      frames, times = _read_frame_folder(path, default_fps, max_output_frames, target_fps)
    elif path.lower().endswith(".gif"):
      frames, times = _read_gif(path, default_fps)
    else:
      frames, times = _read_ffmpeg(path, max_output_frames, target_fps)
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
  return np.stack(frames), np.asarray(times, np.float64)


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
