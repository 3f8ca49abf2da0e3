"""3D rotary position embeddings over (time, height, width) token grids, as Wan 2.1 does.

The head dimension D is split into rotation pairs for the three axes: time gets
D - 4 (D // 6) features, height and width 2 (D // 6) each (Wan's split: time keeps the
remainder). Within an axis of d features, pair i rotates by position * theta^(-2i / d). The
pairs are adjacent features (2i, 2i + 1), as a complex view of the head vector.

Rotating a query at position p and a key at position p' by those angles makes their dot product
a function of p' - p only: attention sees relative offsets in time, height and width.

    angles = grid_angles((t, h, w), head_dim, theta)     # [t*h*w, D/2], row-major (t, h, w)
    q = apply_rotary(q, angles)                          # q [B, N, heads, D]
"""
import jax.numpy as jnp
import numpy as np


def axis_dims(head_dim: int) -> tuple:
  """(time, height, width) features of a head of `head_dim` features (each even)."""
  if head_dim % 2 or head_dim < 6:
    raise ValueError(f"3D RoPE needs an even head dimension >= 6, got {head_dim}")
  space = 2 * (head_dim // 6)
  return head_dim - 2 * space, space, space


def angles_at(positions, head_dim: int, theta: float = 10000.0):
  """Rotation angles [..., N, head_dim / 2] of tokens at `positions` [..., N, 3] (time, height,
  width)."""
  positions = jnp.asarray(positions, jnp.float32)
  parts = []
  for axis, dim in enumerate(axis_dims(head_dim)):
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)      # [dim / 2]
    parts.append(positions[..., axis:axis + 1] * jnp.asarray(freqs, jnp.float32))
  return jnp.concatenate(parts, axis=-1)


def grid_positions(grid) -> np.ndarray:
  """[t*h*w, 3] int (time, height, width) of each token of a (t, h, w) grid, row-major."""
  t, h, w = grid
  tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=-1)


def grid_angles(grid, head_dim: int, theta: float = 10000.0):
  """Rotation angles [t*h*w, head_dim / 2] of the tokens of a (t, h, w) grid (row-major)."""
  return angles_at(grid_positions(grid), head_dim, theta)


def apply_rotary(x, angles):
  """Rotates adjacent feature pairs of x [B, N, heads, D] by angles [N, D / 2] (or per example
  [B, N, D / 2]); float32 math, returned in x's dtype."""
  if (angles.ndim not in (2, 3) or x.shape[1] != angles.shape[-2]
      or x.shape[-1] != 2 * angles.shape[-1]
      or (angles.ndim == 3 and angles.shape[0] not in (1, x.shape[0]))):
    raise ValueError(f"rotary angles {angles.shape} do not match x {x.shape} "
                     "([B, N, heads, D] with angles [N, D / 2] or [B, N, D / 2])")
  if angles.ndim == 2:
    angles = angles[None]
  xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  a, b = xf[..., 0], xf[..., 1]
  out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
