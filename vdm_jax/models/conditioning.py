"""Conditioning of the space-time U-Net: the embedding vector that FiLMs every residual block,
and the low-resolution video of a super-resolution stage resized to the stage's geometry.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import axes
from vdm_jax.models import layers

Dtype = Any

# Scales applied before the sinusoidal embedding so each signal spans many periods.
TIME_SCALE = 1000.0          # logSNR -> time in (0, 1) -> times this
GUIDANCE_SCALE = 100.0       # guidance weight w (~0..20) -> times this


class ConditioningEmbedding(nn.Module):
  """emb = MLP(sin(logsnr)) [+ MLP(sin(fps))] [+ MLP(sin(cond-aug logsnr))]
           [+ MLP(sin(guidance weight)), zero-init] [+ Dense(masked-mean text)].

  All inputs are per example ([B]; text [B, L, D] with mask [B, L]); returns [B, features].
  Optional inputs are passed exactly when the matching flag is on (the U-Net checks).
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logsnr, *, fps=None, cond_aug_logsnr=None, guidance_weight=None,
               text=None, text_mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = layers.ScalarEmbedding(self.features, name="logsnr", **kw)(
        TIME_SCALE * layers.logsnr_to_time(logsnr))
    if fps is not None:
      emb = emb + layers.ScalarEmbedding(self.features, name="fps", **kw)(fps)
    if cond_aug_logsnr is not None:
      emb = emb + layers.ScalarEmbedding(self.features, name="cond_aug", **kw)(
          TIME_SCALE * layers.logsnr_to_time(cond_aug_logsnr))
    if guidance_weight is not None:
      # Zero-initialized: a guided-distillation student starts as its teacher.
      emb = emb + layers.ScalarEmbedding(self.features, zero_init_out=True,
                                         name="guidance", **kw)(GUIDANCE_SCALE * guidance_weight)
    if text is not None:
      pooled = layers.masked_mean(text, text_mask)                  # [B, D]
      pooled = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="text_norm",
                            scale_init=layers.partitioned(nn.initializers.ones_init(),
                                                          (axes.NORM,)),
                            bias_init=layers.partitioned(nn.initializers.zeros_init(),
                                                         (axes.NORM,)))(pooled)
      emb = emb + layers.dense(self.features, name="text_pool", **kw)(pooled)
    return emb


def upsample_lowres(lowres, *, mode, frames, height, width, temporal_method="repeat"):
  """Brings the previous stage's video [B, T', H', W', C] to [B, frames, height, width, C].

  mode 'spatial': T' must equal frames; H', W' are bilinearly resized (jax.image.resize).
  mode 'temporal': H', W' must equal height, width; frames are repeated (T' must divide
  `frames`) or, with temporal_method 'linear', linearly interpolated with the first and last
  frames kept in place.
  """
  b, t, h, w, c = lowres.shape
  if mode == "spatial":
    if t != frames:
      raise ValueError(f"lowres_video has {t} frames but the model input has {frames}; "
                       "spatial super-resolution keeps the frame count")
    return jax.image.resize(lowres, (b, frames, height, width, c), method="bilinear")
  if mode == "temporal":
    if (h, w) != (height, width):
      raise ValueError(f"lowres_video is {h}x{w} but the model input is {height}x{width}; "
                       "temporal super-resolution keeps the frame size")
    if temporal_method == "repeat":
      if frames % t:
        raise ValueError(f"cannot repeat {t} lowres frames to {frames}: {frames} is not a "
                         f"multiple of {t} (use lowres_temporal_upsample='linear')")
      return jnp.repeat(lowres, frames // t, axis=1)
    if temporal_method == "linear":
      if t == 1 or frames == 1:
        return jnp.repeat(lowres[:, :1], frames, axis=1)
      pos = jnp.arange(frames, dtype=jnp.float32) * (t - 1) / (frames - 1)
      lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, t - 2)
      frac = (pos - lo)[None, :, None, None, None]
      x0 = jnp.take(lowres, lo, axis=1)
      x1 = jnp.take(lowres, lo + 1, axis=1)
      return (x0 * (1.0 - frac) + x1 * frac).astype(lowres.dtype)
    raise ValueError(f"unknown lowres_temporal_upsample {temporal_method!r}")
  raise ValueError(f"unknown lowres_conditioning {mode!r}")
