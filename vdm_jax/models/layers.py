"""Building blocks of the space-time U-Net: partitioned dense/conv layers, per-frame norms,
the conditioning embedding, residual blocks, temporal convolutions and spatial resampling.

Video activations are channels-last [B, T, H, W, C]. Every parameter carries logical axis
names from `vdm_jax.models.axes`; block outputs get a logical sharding constraint over
(BATCH, FRAMES, HEIGHT, WIDTH, CHANNELS). Spatial operations (convs, norms) act on each frame
alone, so the only layers that mix frames are the temporal ones (`TemporalConv`, temporal
attention). Temporal layers start as the identity (zero-initialized residual), so a model
inflated from an image model computes the image model at initialization.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import axes

VIDEO_AXES = (axes.BATCH, axes.FRAMES, axes.HEIGHT, axes.WIDTH, axes.CHANNELS)
Dtype = Any


def constrain_video(x):
  """Logical sharding constraint for a [B, T, H, W, C] activation (no-op without rules)."""
  return nn.with_logical_constraint(x, VIDEO_AXES)


def partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def dense(features, *, names=(axes.EMBED, axes.MLP), zero_init=False, dtype=jnp.float32,
          param_dtype=jnp.float32, name=None):
  """nn.Dense whose kernel is named `names` (in, out) and bias (out,)."""
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=partitioned(kinit, names),
                  bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]))


def conv(features, kernel_size, *, strides=None, names_io=(axes.EMBED, axes.MLP),
         zero_init=False, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
  """nn.Conv with 'SAME' padding; kernel named (CONV_SPACE, None.., in, out).

  A 2-D kernel_size (kh, kw) applied to [B, T, H, W, C] convolves each frame alone (T is a
  batch dimension); a 3-D kernel_size (kt, kh, kw) convolves over time too. Flax refuses a
  logical name repeated within one array, so only the first kernel extent is CONV_SPACE and
  the others are None (both unsharded).
  """
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  names = (axes.CONV_SPACE,) + (None,) * (len(kernel_size) - 1) + tuple(names_io)
  if len(tuple(kernel_size)) == 3 and tuple(kernel_size)[1:] == (1, 1) and strides is None:
    return TimeConv(features, kernel_size[0], dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=partitioned(kinit, names),
                    bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]))
  return nn.Conv(features, kernel_size, strides=strides, padding="SAME", dtype=dtype,
                 param_dtype=param_dtype, name=name, kernel_init=partitioned(kinit, names),
                 bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]))


class TimeConv(nn.Module):
  """A (kt, 1, 1) 'SAME' convolution over time of [B, T, H, W, C], with nn.Conv's parameters
  (kernel [kt, 1, 1, C, features], bias [features]), computed as a 2-D convolution of
  [B, T, H*W, C] with a (kt, 1) kernel. Same result as nn.Conv's 3-D convolution, which XLA's
  CPU backend runs about 2x slower forward and backward (experiments/benchmarks/README.md,
  "Where the train step loses")."""
  features: int
  kernel_frames: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    kt = self.kernel_frames
    kernel = self.param("kernel", self.kernel_init, (kt, 1, 1, c, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = ((kt - 1) // 2, kt // 2)         # 'SAME', as nn.Conv pads
    y = jax.lax.conv_general_dilated(
        x.reshape(b, t, h * w, c), kernel.reshape(kt, 1, c, self.features), (1, 1),
        (pad, (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y + bias).reshape(b, t, h, w, self.features)


class FrameGroupNorm(nn.Module):
  """GroupNorm with statistics per example *and per frame* of a [B, T, H, W, C] video."""
  num_groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t = x.shape[:2]
    norm = nn.GroupNorm(num_groups=self.num_groups, dtype=self.dtype,
                        param_dtype=self.param_dtype,
                        scale_init=partitioned(nn.initializers.ones_init(), (axes.NORM,)),
                        bias_init=partitioned(nn.initializers.zeros_init(), (axes.NORM,)))
    y = norm(x.reshape((b * t,) + x.shape[2:]))                   # [B*T, H, W, C]
    return y.reshape(x.shape)


def sinusoidal_embedding(values, dim, *, max_period=10000.0):
  """Transformer sinusoids of a [B] float array -> [B, dim] float32 (cos half, sin half)."""
  if dim % 2:
    raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = values.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def logsnr_to_time(logsnr):
  """Maps logSNR to a time-like value in (0, 1): the cosine schedule's inverse.

  t = arctan(exp(-logsnr / 2)) / (pi / 2); large logSNR (clean) -> 0, small -> 1.
  """
  return jnp.arctan(jnp.exp(-0.5 * logsnr.astype(jnp.float32))) / (0.5 * jnp.pi)


class ScalarEmbedding(nn.Module):
  """MLP(sinusoidal(value)): a [B] scalar -> [B, features]."""
  features: int
  zero_init_out: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, values):
    h = sinusoidal_embedding(values, self.features)
    h = dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="in")(h)
    h = nn.silu(h)
    return dense(self.features, names=(axes.MLP, axes.EMBED), zero_init=self.zero_init_out,
                 dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)


def masked_mean(tokens, mask):
  """Mean of tokens [B, L, D] over the True entries of mask [B, L]; zeros where none is."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(tokens.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class TemporalConv(nn.Module):
  """Residual branch GroupNorm -> SiLU -> 3x1x1 conv, zero-initialized.

  Returns the *branch* ([B, T, H, W, C], zeros at init); the caller adds it. Examples flagged
  by `is_image` [B] get zeros, so their frames never see each other.
  """
  num_groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, is_image):
    h = FrameGroupNorm(self.num_groups, self.dtype, self.param_dtype, name="norm")(x)
    h = conv(x.shape[-1], (3, 1, 1), zero_init=True, dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv")(nn.silu(h))
    return jnp.where(is_image[:, None, None, None, None], jnp.zeros((), h.dtype), h)


class TemporalConvBlock(nn.Module):
  """x + TemporalConv(x): a level's temporal mixing when temporal_mixing == 'conv'."""
  num_groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, is_image):
    branch = TemporalConv(self.num_groups, self.dtype, self.param_dtype, name="temporal")
    return constrain_video(x + branch(x, is_image))


class ResBlock(nn.Module):
  """GroupNorm, SiLU, 3x3 conv, FiLM from the conditioning embedding, GroupNorm, SiLU,
  dropout, 3x3 conv, optional temporal conv (identity at init), residual skip.

  With `temporal_conv_after_each` the first 3x3 conv is followed by a temporal conv too, so
  that every spatial conv is a pseudo-3D conv (Make-A-Video).

  Call: (x [B, T, H, W, Cin], emb [B, E] or per frame [B, T, E], is_image [B] bool)
  -> [B, T, H, W, out_channels].
  """
  out_channels: int
  num_groups: int
  dropout: float = 0.0
  temporal_conv: bool = False
  temporal_conv_after_each: bool = False
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, is_image):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = self.out_channels
    h = FrameGroupNorm(self.num_groups, name="norm1", **kw)(x)
    h = conv(c, (3, 3), name="conv1", **kw)(nn.silu(h))
    if self.temporal_conv and self.temporal_conv_after_each:
      h = h + TemporalConv(self.num_groups, name="temporal_conv1", **kw)(h, is_image)
    film = dense(2 * c, name="film", **kw)(nn.silu(emb))           # [B, 2C] or [B, T, 2C]
    film = film[:, None, None, None] if film.ndim == 2 else film[:, :, None, None]
    scale, shift = jnp.split(film, 2, axis=-1)
    h = FrameGroupNorm(self.num_groups, name="norm2", **kw)(h)
    h = nn.silu(h * (1.0 + scale) + shift)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    h = conv(c, (3, 3), names_io=(axes.MLP, axes.EMBED), name="conv2", **kw)(h)
    if self.temporal_conv:
      h = h + TemporalConv(self.num_groups, name="temporal", **kw)(h, is_image)
    skip = x if x.shape[-1] == c else dense(c, name="skip", **kw)(x)
    return constrain_video(skip + h)


class Downsample(nn.Module):
  """Halves height and width with a strided 3x3 conv per frame; frames are kept."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = conv(self.channels, (3, 3), strides=(2, 2), dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv")(x)
    return constrain_video(y)


class Upsample(nn.Module):
  """Doubles height and width (nearest neighbour) then a 3x3 conv per frame."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    y = conv(self.channels, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv")(x)
    return constrain_video(y)

