"""The moving-shapes renderer: anti-aliased rasterization of the shapes and `render(spec)`.

Unit shapes have half-extent 1 (they fit in [-1, 1]^2), x to the right, y DOWN; they are
scaled by a radius in pixels and placed at a centre in EDGE-BASED pixel coordinates (the frame
spans [0, W] x [0, H]; pixel (i, j) covers [j, j+1] x [i, i+1]). `render` draws a clip as the
module docstring of `grammar` defines it. Pure numpy.
"""
import math

import numpy as np

from vdm_jax.data.moving_shapes import grammar


def _regular(n, radius=1.0, phase=-90.0):
  a = np.radians(phase + 360.0 * np.arange(n) / n)
  return np.stack([radius * np.cos(a), radius * np.sin(a)], -1)


def _star():
  outer, inner = _regular(5), _regular(5, 0.45, -90.0 + 36.0)
  return np.stack([outer, inner], 1).reshape(10, 2)


_T = 1.0 / 3.0  # half-width of the cross's arms
POLYGONS = {  # unit shapes (half-extent 1), x right, y down
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64),
    "triangle": np.array([[0, -1], [1, 1], [-1, 1]], np.float64),
    "diamond": np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64),
    "cross": np.array([[-_T, -1], [_T, -1], [_T, -_T], [1, -_T], [1, _T], [_T, _T], [_T, 1],
                       [-_T, 1], [-_T, _T], [-1, _T], [-1, -_T], [-_T, -_T]], np.float64),
    "star": _star(),
    "hexagon": _regular(6, 1.0, 0.0),
}
assert set(POLYGONS) | {"circle"} == set(grammar.SHAPES)


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask: is (u, v) (coordinates / radius, relative to the centre) inside `shape`?"""
  if shape == "circle":
    return u * u + v * v <= 1.0
  verts = POLYGONS[shape]
  inside = np.zeros(np.broadcast(u, v).shape, bool)
  for (x1, y1), (x2, y2) in zip(verts, np.roll(verts, -1, axis=0)):
    if y1 == y2:
      continue
    crosses = (y1 > v) != (y2 > v)
    x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
    inside ^= crosses & (u < x_at)
  return inside


def draw_shape(frame: np.ndarray, shape: str, *, center, radius: float, color,
               supersample: int = 4) -> None:
  """Composites `shape` onto `frame` (float [H, W, 3], in place) with coverage anti-aliasing.

  `center` = (cx, cy) in edge-based pixel coordinates, `radius` = half-extent in pixels; a pixel
  becomes alpha * color + (1 - alpha) * itself, alpha = fraction of its `supersample`^2
  sub-samples (at (j + (k + 0.5) / s, i + (l + 0.5) / s)) inside the shape.
  """
  h, w = frame.shape[:2]
  s, (cx, cy), r = supersample, center, radius
  c0, c1 = max(int(math.floor(cx - r)), 0), min(int(math.ceil(cx + r)), w)
  r0, r1 = max(int(math.floor(cy - r)), 0), min(int(math.ceil(cy + r)), h)
  if c1 <= c0 or r1 <= r0:
    return
  xs = c0 + (np.arange((c1 - c0) * s) + 0.5) / s
  ys = r0 + (np.arange((r1 - r0) * s) + 0.5) / s
  mask = inside_shape(shape, (xs[None, :] - cx) / r, (ys[:, None] - cy) / r)
  alpha = mask.reshape(r1 - r0, s, c1 - c0, s).mean(axis=(1, 3))[..., None]
  region = frame[r0:r1, c0:c1]
  frame[r0:r1, c0:c1] = alpha * np.asarray(color, np.float32) + (1.0 - alpha) * region


def render(spec: grammar.ClipSpec, supersample: int = 4) -> np.ndarray:
  """Renders the clip: uint8 [T, H, W, 3] (T = spec.frames; an image spec gives T = 1)."""
  t_count, h, w = spec.frames, spec.height, spec.width
  video = np.empty((t_count, h, w, 3), np.float32)
  video[:] = grammar.BACKGROUNDS[spec.background].astype(np.float32)
  centers = grammar.object_centers(spec) * np.array([w, h])  # [T, N, 2] in pixels (edge-based)
  for n, o in enumerate(spec.objects):
    r = grammar.SIZES[o.size] * min(h, w)
    color = grammar.COLORS[o.color].astype(np.float32)
    for t in range(t_count):
      draw_shape(video[t], o.shape, center=centers[t, n], radius=r, color=color,
                 supersample=supersample)
  return np.clip(np.round(video), 0, 255).astype(np.uint8)
