"""Layers of the video autoencoders: causal 3-D convolutions with an explicit frame cache,
per-frame norms, residual blocks, per-frame attention, and the space and time resamplers.

Video activations are channels-last [B, T, H, W, C]. Nothing here mixes frames except the
causal convolutions (kernel kt > 1) and the time resamplers, and those read only the current and
past frames: time is padded on the past side only. Every norm acts on one frame (GroupNorm with
per-frame statistics, or RMS over channels per pixel), so a clip processed in chunks gives
exactly what the whole clip gives.

The frame cache. A layer that reads past frames keeps the last frames of its input in the Flax
collection 'cache' (`frames`, [B, kt - 1, H, W, C] for a causal conv; the previous input frame
for a time downsampler). The collection is an explicit pytree: whoever processes a video in
chunks passes it in with the next chunk and gets the updated one back
(`apply({'params': p, 'cache': c}, chunk, mutable=['cache'])`, see `chunked.py`). A call
without it processes the start of a video: past frames are zeros (the causal padding), and the
time resamplers treat frame 0 as the first frame, which is compressed in space only
(T = 1 + 4k frames -> 1 + k latents). A layer writes its cache only when the collection is
mutable, so training on whole clips carries none.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import axes
from vdm_jax.models.layers import FrameGroupNorm, constrain_video, dense, partitioned

Dtype = Any
CACHE = "cache"
NORMS = ("group", "rms")


def _kernel_names(ndim_kernel: int):
  return (axes.CONV_SPACE,) + (None,) * (ndim_kernel - 3) + (axes.EMBED, axes.MLP)


def identity_last_tap(kt: int, copies: int = 1):
  """Kernel init [kt, 1, 1, C, copies * C]: the identity on the newest frame (last tap), zero
  on the past ones; `copies` > 1 repeats the input in each block of output channels."""
  def init(key, shape, dtype=jnp.float32):
    del key
    kt_, kh, kw, cin, cout = shape
    assert (kt_, kh, kw) == (kt, 1, 1) and cout == copies * cin, shape
    eye = jnp.tile(jnp.eye(cin, dtype=dtype), (1, copies))            # [C, copies * C]
    return jnp.zeros(shape, dtype).at[kt - 1, 0, 0].set(eye)
  return init


def halo_past(x, cached, n: int, axis: Optional[str]):
  """The n frames before `x` [B, T, ...]: `cached` (the previous chunk's, or the start's), or,
  when the time axis is sharded over mesh axis `axis` (`decode_time_sharded`), the last n
  frames of the previous device's `x` (a `ppermute` halo), with `cached` on the first device."""
  if axis is None:
    return cached
  if x.shape[1] < n:
    raise ValueError(f"a time shard of {x.shape[1]} frames is shorter than the {n}-frame halo "
                     "a causal layer needs: give every device more latents")
  size = jax.lax.axis_size(axis)
  neighbour = jax.lax.ppermute(x[:, -n:], axis, [(i, i + 1) for i in range(size - 1)])
  return jnp.where(jax.lax.axis_index(axis) == 0, cached.astype(x.dtype), neighbour)


class CausalConv3D(nn.Module):
  """A 3-D convolution over [B, T, H, W, C], 'SAME' in space and causal in time: output frame t
  reads input frames t - kt + 1 .. t (zeros before the video starts, or the cached frames of
  the previous chunk). kt = 1 is a per-frame 2-D convolution (kernel [1, kh, kw, Cin, Cout])."""
  features: int
  kernel: Sequence[int] = (3, 3, 3)          # (kt, kh, kw)
  zero_init: bool = False
  kernel_init: Any = None
  halo_axis: Optional[str] = None      # the mesh axis time is sharded over (halo_past)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kt, kh, kw = self.kernel
    if kt > 1:
      past = (self.get_variable(CACHE, "frames") if self.has_variable(CACHE, "frames")
              else jnp.zeros(x.shape[:1] + (kt - 1,) + x.shape[2:], x.dtype))
      past = halo_past(x, past, kt - 1, self.halo_axis)
      full = jnp.concatenate([past.astype(x.dtype), x], axis=1)       # [B, kt - 1 + T, H, W, C]
      if self.is_mutable_collection(CACHE):
        self.put_variable(CACHE, "frames", full[:, -(kt - 1):])
    else:
      full = x
    if self.kernel_init is not None:
      kinit = self.kernel_init
    else:
      kinit = nn.initializers.zeros_init() if self.zero_init else nn.initializers.lecun_normal()
    conv = nn.Conv(self.features, (kt, kh, kw),
                   padding=((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
                   dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
                   kernel_init=partitioned(kinit, _kernel_names(5)),
                   bias_init=partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    return conv(full)


class RMSNorm(nn.Module):
  """x / rms(x over channels) * gamma, per pixel (Wan 2.1's norm): never mixes frames or
  pixels, so chunked and tiled processing are exact."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param("scale", partitioned(nn.initializers.ones_init(), (axes.NORM,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * gamma).astype(self.dtype)


def make_norm(kind: str, groups: int, dtype, param_dtype, name=None) -> nn.Module:
  if kind == "group":
    return FrameGroupNorm(groups, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "rms":
    return RMSNorm(dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"norm {kind!r} is not one of {NORMS}")


class ResBlock(nn.Module):
  """norm -> SiLU -> conv -> norm -> SiLU -> dropout -> conv, plus a 1x1 skip when the width
  changes. Convs have time kernel `kt` (1: per frame; 3: causal over time)."""
  channels: int
  kt: int = 3
  norm: str = "group"
  groups: int = 32
  dropout: float = 0.0
  zero_out: bool = False        # output conv zero-initialized: the block starts as the identity
  halo_axis: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(make_norm(self.norm, self.groups, name="norm1", **kw)(x))
    h = CausalConv3D(self.channels, (self.kt, 3, 3), halo_axis=self.halo_axis, name="conv1",
                     **kw)(h)
    h = nn.silu(make_norm(self.norm, self.groups, name="norm2", **kw)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = CausalConv3D(self.channels, (self.kt, 3, 3), zero_init=self.zero_out,
                     halo_axis=self.halo_axis, name="conv2", **kw)(h)
    skip = x if x.shape[-1] == self.channels else dense(self.channels, name="skip", **kw)(x)
    return constrain_video(skip + h)


class TemporalResBlock(nn.Module):
  """Video LDM / Stable Video Diffusion's temporal mixing after a frozen spatial block: a
  residual block of causal (kt, 1, 1) convs blended with its input by a learned factor,
  out = a x + (1 - a) temporal(x) with a = sigmoid(mix_logit). The output conv starts at zero,
  so temporal(x) = x and the block is the identity at initialization."""
  kt: int = 3
  norm: str = "group"
  groups: int = 32
  mix_init: float = 0.0
  halo_axis: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, kw = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(make_norm(self.norm, self.groups, name="norm1", **kw)(x))
    h = CausalConv3D(c, (self.kt, 1, 1), halo_axis=self.halo_axis, name="conv1", **kw)(h)
    h = nn.silu(make_norm(self.norm, self.groups, name="norm2", **kw)(h))
    h = CausalConv3D(c, (self.kt, 1, 1), zero_init=True, halo_axis=self.halo_axis,
                     name="conv2", **kw)(h)
    mix = self.param("mix_logit", nn.initializers.constant(self.mix_init), (), jnp.float32)
    a = jax.nn.sigmoid(mix).astype(x.dtype)
    return constrain_video(a * x + (1 - a) * (x + h))


class FrameAttention(nn.Module):
  """Single-head self-attention over the pixels of each frame (the VAE's middle block), with a
  residual connection."""
  norm: str = "group"
  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = make_norm(self.norm, self.groups, name="norm", **kw)(x).reshape(b * t, h * w, c)
    q, k, v = (dense(c, name=n, **kw)(y) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / jnp.sqrt(c)
    att = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = dense(c, name="out", **kw)(jnp.einsum("bqk,bkc->bqc", att, v))
    return constrain_video(x + out.reshape(x.shape))


class SpaceDown(nn.Module):
  """Halves height and width: pad one pixel at the bottom and right, 3x3 conv of stride 2, per
  frame (Stable Diffusion's and Wan's downsampler)."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
    conv = nn.Conv(self.channels, (1, 3, 3), strides=(1, 2, 2), padding="VALID",
                   dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
                   kernel_init=partitioned(nn.initializers.lecun_normal(), _kernel_names(5)),
                   bias_init=partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    return constrain_video(conv(x))


class SpaceUp(nn.Module):
  """Doubles height and width (nearest neighbour), then a 3x3 conv per frame."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    y = CausalConv3D(self.channels, (1, 3, 3), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="conv")(x)
    return constrain_video(y)


class TimeDown(nn.Module):
  """Halves the frames after the first: frames (x0, x1, ..., x2m) -> (x0, y1, ..., ym) with
  y_j = conv over (x_{2j-2}, x_{2j-1}, x_{2j}) (kernel 3, stride 2 in time). Starts as
  y_j = x_{2j}. A chunk after the first has an even number of frames; its cache holds the
  previous chunk's last input frame."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.has_variable(CACHE, "frames"):
      first, past, rest = None, self.get_variable(CACHE, "frames").astype(x.dtype), x
    else:   # the start of a video: frame 0 passes through; it is the past of frame 1
      first, past, rest = x[:, :1], x[:, :1], x[:, 1:]
    if rest.shape[1] % 2:
      raise ValueError(f"a time downsampler got {rest.shape[1]} frames after the first; it "
                       "needs an even number (1 + 2m frames for a whole clip)")
    if self.is_mutable_collection(CACHE):
      self.put_variable(CACHE, "frames", x[:, -1:])
    conv = nn.Conv(c, (3, 1, 1), strides=(2, 1, 1), padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="conv",
                   kernel_init=partitioned(identity_last_tap(3), _kernel_names(5)),
                   bias_init=partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    if rest.shape[1]:
      y = conv(jnp.concatenate([past, rest], axis=1))
    else:   # a lone first frame; at init the kernel is still made (an init on one frame)
      y = rest
      if self.is_initializing():
        conv(jnp.concatenate([past] * 3, axis=1))
    return constrain_video(y if first is None else jnp.concatenate([first, y], axis=1))


class TimePool(nn.Module):
  """CogVideoX's parameter-free time downsampler: (x0, x1, ..., x2m) -> (x0, y1, ..., ym) with
  y_j = (x_{2j-1} + x_{2j}) / 2. Reads no earlier chunk, so it keeps no cache."""

  @nn.compact
  def __call__(self, x, start: bool):
    first, rest = (x[:, :1], x[:, 1:]) if start else (None, x)
    if rest.shape[1] % 2:
      raise ValueError(f"a time downsampler got {rest.shape[1]} frames after the first; it "
                       "needs an even number (1 + 2m frames for a whole clip)")
    b, t = rest.shape[:2]
    y = rest.reshape((b, t // 2, 2) + rest.shape[2:]).mean(axis=2)
    return constrain_video(y if first is None else jnp.concatenate([first, y], axis=1))


def time_repeat(x, start: bool):
  """CogVideoX's parameter-free time upsampler: (z0, z1, ..., zm) -> (z0, z1, z1, ..., zm, zm)
  (frame 0 not repeated at the start of a video)."""
  y = jnp.repeat(x, 2, axis=1)
  return constrain_video(y[:, 1:] if start else y)


class TimeUp(nn.Module):
  """Doubles the frames after the first: (z0, z1, ..., zm) -> (z0, a1, b1, ..., am, bm), where
  (a_j, b_j) are the two halves of a causal conv (kernel 3 in time) at z_j. Starts as
  a_j = b_j = z_j."""
  halo_axis: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    start = not self.has_variable(CACHE, "frames")
    past = (jnp.zeros((b, 2, h, w, c), x.dtype) if start
            else self.get_variable(CACHE, "frames").astype(x.dtype))
    past = halo_past(x, past, 2, self.halo_axis)
    full = jnp.concatenate([past, x], axis=1)                            # [B, 2 + T, H, W, C]
    if self.is_mutable_collection(CACHE):
      self.put_variable(CACHE, "frames", full[:, -2:])
    conv = nn.Conv(2 * c, (3, 1, 1), padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="time_conv",
                   kernel_init=partitioned(identity_last_tap(3, copies=2), _kernel_names(5)),
                   bias_init=partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    y = conv(full).reshape(b, t, h, w, 2, c)
    y = y.transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    if start:   # frame 0 is the first frame: upsampled in space only
      y = jnp.concatenate([x[:, :1], y[:, 2:]], axis=1)
    return constrain_video(y)
