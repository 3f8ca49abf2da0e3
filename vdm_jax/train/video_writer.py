"""Writes videos [T, H, W, 3] in [-1, 1] (or uint8) as GIF (Pillow) and MP4 (imageio-ffmpeg)."""
import os
from typing import Sequence

import numpy as np


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[T, H, W, C] float in [-1, 1] (clipped) or uint8 -> uint8 [T, H, W, 3]."""
  video = np.asarray(video)
  if video.dtype != np.uint8:
    video = np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  if video.ndim != 4 or video.shape[-1] not in (1, 3):
    raise ValueError(f"expected a video [T, H, W, 1 or 3], got shape {video.shape}")
  if video.shape[-1] == 1:
    video = np.repeat(video, 3, axis=-1)
  return video


def write_gif(path: str, video: np.ndarray, fps: float, scale: int = 1) -> str:
  """A looping GIF of `video` (nearest-neighbour upscaled by `scale`); returns the path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames = to_uint8(video)
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  duration = max(int(round(1000.0 / max(fps, 1e-3))), 20)
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
  return path


def write_mp4(path: str, video: np.ndarray, fps: float, scale: int = 1) -> str:
  """An H.264 MP4 through the ffmpeg binary that imageio-ffmpeg ships; returns the path.

  Frames are upscaled by `scale` and padded to even sizes (yuv420p needs them)."""
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  frames = to_uint8(video)
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  if pad_h or pad_w:
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                          pixelformat="yuv420p", macro_block_size=1) as writer:
    for f in frames:
      writer.append_data(f)
  return path


def write_videos(directory: str, videos: Sequence[np.ndarray], *, fps: float,
                 prompts: Sequence[str] = (), scale: int = 4,
                 formats: Sequence[str] = ("gif", "mp4")) -> list[str]:
  """Writes `videos[i]` as `directory/{i:03d}.{gif,mp4}` and the prompts (one a line) to
  `directory/prompts.txt`. Returns the written paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i, video in enumerate(videos):
    for fmt in formats:
      path = os.path.join(directory, f"{i:03d}.{fmt}")
      paths.append((write_gif if fmt == "gif" else write_mp4)(path, video, fps, scale))
  if prompts:
    path = os.path.join(directory, "prompts.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(f"{i:03d}: {p}" for i, p in enumerate(prompts)) + "\n")
    paths.append(path)
  return paths
