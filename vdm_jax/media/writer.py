"""Writes a directory of sample videos with their prompts (GIF + MP4 through the gallery's
writers, `vdm_jax.media.gallery.write_video`)."""
import os
from typing import Sequence

import numpy as np

from vdm_jax.media import gallery


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[T, H, W, C] float in [-1, 1] (clipped) -> uint8; uint8 passes through."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_videos(directory: str, videos: Sequence[np.ndarray], *, fps: float,
                 prompts: Sequence[str] = (), scale: int = 4,
                 formats: Sequence[str] = ("gif", "mp4")) -> list[str]:
  """Writes `videos[i]` ([T, H, W, 3] in [-1, 1]) as `directory/{i:03d}.{gif,mp4}`, upscaled
  by `scale`, and the prompts (one a line, numbered) to `directory/prompts.txt`.
  Returns the written paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i, video in enumerate(videos):
    for fmt in formats:
      paths.append(gallery.write_video(os.path.join(directory, f"{i:03d}.{fmt}"),
                                       to_uint8(video), fps, scale))
  if prompts:
    path = os.path.join(directory, "prompts.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(f"{i:03d}: {p}" for i, p in enumerate(prompts)) + "\n")
    paths.append(path)
  return paths
