"""Shape and size of a moving-shapes object from its per-frame coverage (alpha) maps.

Analysis by synthesis: for every shape of the vocabulary, the size whose area matches the
measured coverage is chosen, the shape's coverage is rendered at the measured centroid of every
frame (anti-aliased, as `render.render` draws it) and compared with the measured alpha maps;
the (shape, size) with the smallest squared error wins. At 16x16 a small object is ~3 pixels
across, where hand-made features (fill ratio, corners) cannot tell a circle from a hexagon, but
coverage values of the edge pixels can.
"""
import functools
import math
from typing import Dict, Tuple

import numpy as np

from vdm_jax.data.moving_shapes import grammar
from vdm_jax.data.moving_shapes import render


@functools.lru_cache(maxsize=None)
def unit_shape_stats(shape: str) -> Tuple[float, float, float]:
  """(area, centroid x, centroid y) of the unit shape (half-extent 1), exact (shoelace)."""
  if shape == "circle":
    return math.pi, 0.0, 0.0
  v = render.POLYGONS[shape]
  x, y = v[:, 0], v[:, 1]
  xn, yn = np.roll(x, -1), np.roll(y, -1)
  cross = x * yn - xn * y
  area = cross.sum() / 2.0
  return (abs(area), float(((x + xn) * cross).sum() / (6 * area)),
          float(((y + yn) * cross).sum() / (6 * area)))


def radius_px(size: str, height: int, width: int) -> float:
  """Half-extent in pixels of an object of `size` in a height x width frame."""
  return grammar.SIZES[size] * min(height, width)


def window_half(height: int, width: int) -> int:
  """Half-size in pixels of a square that holds any object around its centroid."""
  r = max(grammar.SIZES.values()) * min(height, width)
  return int(math.ceil(1.5 * r)) + 2


def render_coverage(shape: str, centers: np.ndarray, radius: float, origins: np.ndarray,
                    size: int, supersample: int) -> np.ndarray:
  """Coverage of `shape` in size x size windows: [T, size, size] in [0, 1].

  centers: [T, 2] shape centres (x, y) in edge-based pixels; origins: [T, 2] int (col, row) of
  each window's top-left pixel in the same coordinates.
  """
  s = supersample
  sub = (np.arange(size * s) + 0.5) / s                            # [size*s]
  xs = origins[:, 0:1] + sub[None] - centers[:, 0:1]                # [T, size*s]
  ys = origins[:, 1:2] + sub[None] - centers[:, 1:2]
  mask = render.inside_shape(shape, xs[:, None, :] / radius, ys[:, :, None] / radius)
  t = centers.shape[0]
  return mask.reshape(t, size, s, size, s).mean(axis=(2, 4))


def _supersample(radius: float) -> int:
  return int(np.clip(math.ceil(24.0 / radius), 2, 8))


def fit_shape(alpha: np.ndarray, centroids: np.ndarray, valid: np.ndarray,
              height: int, width: int, max_frames: int = 8) -> Dict[str, object]:
  """Best (shape, size) for one object.

  Args:
    alpha: [T, H + 2m, W + 2m] the object's coverage, zero-padded by m = window_half(H, W).
    centroids: [T, 2] coverage centroids (x, y) in edge-based pixels of the unpadded frame.
    valid: [T] bool, frames where the object was seen.
    height, width: the unpadded frame size.
    max_frames: at most this many (evenly spaced) valid frames are fitted.
  Returns:
    dict(shape, size, frame_shapes [T] (per-frame best shape, "" where not valid),
         errors {(shape, size): mean squared error per fitted frame}).
  """
  t_all = np.flatnonzero(valid)
  frame_shapes = np.array([""] * alpha.shape[0], dtype=object)
  if t_all.size == 0:
    return dict(shape=None, size=None, frame_shapes=frame_shapes, errors={})
  pick = t_all[np.unique(np.linspace(0, t_all.size - 1, min(max_frames, t_all.size))
                         .round().astype(int))]
  m = window_half(height, width)
  size = 2 * m
  area = alpha[pick].sum(axis=(1, 2))                                      # [F]
  origins = np.floor(centroids[pick]).astype(np.int64) - m + 1            # window top-left
  origins = np.clip(origins, -m, np.array([width, height]) + m - size)
  patches = np.stack([alpha[i, o[1] + m:o[1] + m + size, o[0] + m:o[0] + m + size]
                      for i, o in zip(pick, origins)])                     # [F, size, size]
  outside = alpha[pick].sum(axis=(1, 2)) - patches.sum(axis=(1, 2))      # coverage missed
  errors, per_frame = {}, {}
  for shape in grammar.SHAPES:
    unit_area, ox, oy = unit_shape_stats(shape)
    # The size whose area is closest (in log) to the measured mean area.
    r2 = {z: radius_px(z, height, width) ** 2 for z in grammar.SIZE_NAMES}
    mean_area = max(float(np.mean(area)), 1e-6)
    z = min(r2, key=lambda k: abs(math.log(unit_area * r2[k] / mean_area)))
    r = math.sqrt(r2[z])
    centers = centroids[pick] - r * np.array([ox, oy])
    model = render_coverage(shape, centers, r, origins, size, _supersample(r))
    sq = ((patches - model) ** 2).sum(axis=(1, 2)) + np.abs(outside)    # [F]
    errors[(shape, z)] = float(sq.mean())
    per_frame[shape] = sq
  best_shape, best_size = min(errors, key=errors.get)
  frame_best = np.array(list(per_frame))[np.argmin(np.stack(list(per_frame.values())), 0)]
  frame_shapes[pick] = frame_best
  return dict(shape=best_shape, size=best_size, frame_shapes=frame_shapes, errors=errors)
