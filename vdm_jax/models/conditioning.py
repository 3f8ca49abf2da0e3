"""Conditioning of the space-time U-Net: the embedding vector that FiLMs every residual block,
the low-resolution video of a super-resolution stage resized to the stage's geometry, and the
known frames + frame mask of masked frame interpolation (Make-A-Video).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


# Masked frame interpolation (Make-A-Video): training mask patterns, by name.
#   stride:k  keep frames 0, k, 2k, ... (interpolation; a temporal SR stage with factor k)
#   prefix:m  keep the first m frames (extrapolation: continue a clip)
#   none      keep nothing (plain generation)
FRAME_MASK_KINDS = ("stride", "prefix", "none")


def frame_mask_pattern(pattern: str, frames: int) -> np.ndarray:
  """The bool mask [frames] (True = known frame) of one pattern name (FRAME_MASK_KINDS)."""
  name, _, arg = str(pattern).partition(":")
  if name == "none" and not arg:
    return np.zeros((frames,), bool)
  if name in ("stride", "prefix") and arg.isdigit():
    n = int(arg)
    if name == "stride" and 2 <= n < frames:
      return np.arange(frames) % n == 0
    if name == "prefix" and 1 <= n < frames:
      return np.arange(frames) < n
    bound = "2 <= k" if name == "stride" else "1 <= m"
    raise ValueError(f"frame mask pattern {pattern!r} needs {bound} < {frames} (the frames of "
                     "a training row, the crop window if data.crop_frames is set)")
  raise ValueError(f"unknown frame mask pattern {pattern!r}; use 'stride:<k>' (keep frames 0, "
                   "k, 2k, ...), 'prefix:<m>' (keep the first m frames) or 'none'")


def frame_mask_table(patterns: Sequence[str], frames: int) -> np.ndarray:
  """The masks of `patterns` stacked: bool [len(patterns), frames]; ValueError if one is bad."""
  if isinstance(patterns, str) or not len(patterns):
    raise ValueError(f"frame mask patterns must be a non-empty tuple of names, got {patterns!r}")
  return np.stack([frame_mask_pattern(p, frames) for p in patterns])


def temporal_factor(frames: int, known: int) -> int:
  """The stride k at which `known` frames sit at 0, k, 2k, ... of `frames`: frames = k * known
  (Imagen Video's TSR: every k-th frame, the last k - 1 frames after the last known one) or
  frames = k * (known - 1) + 1 (both ends known: Make-A-Video's 16 -> 76 frames, k = 5).
  Raises ValueError when neither holds."""
  frames, known = int(frames), int(known)
  if known >= 1 and frames % known == 0:
    return frames // known
  if known >= 2 and (frames - 1) % (known - 1) == 0:
    return (frames - 1) // (known - 1)
  raise ValueError(f"cannot place {known} known frames at a regular stride in {frames} frames: "
                   f"{frames} is neither k * {known} nor k * ({known} - 1) + 1")


def place_known_frames(lowres, *, frames: int):
  """Puts the previous stage's T' frames [B, T', H, W, C] at frames 0, s, 2s, ... of a
  [B, frames, H, W, C] video (s = `temporal_factor(frames, T')`; zeros elsewhere).

  Returns (frame_cond [B, frames, H, W, C], frame_mask bool [B, frames]).
  """
  b, t = lowres.shape[:2]
  stride = temporal_factor(frames, t)
  cond = jnp.zeros((b, frames) + tuple(lowres.shape[2:]), lowres.dtype)
  cond = cond.at[:, ::stride].set(lowres)
  mask = jnp.broadcast_to(jnp.arange(frames) % stride == 0, (b, frames))
  return cond, mask


def frame_mask_channels(frame_cond, frame_mask):
  """The extra U-Net input of masked frame interpolation: the known frames (zeroed where
  unknown) and the mask broadcast over space, [B, T, H, W, C] + [B, T] -> [B, T, H, W, C + 1]."""
  mask = frame_mask.astype(jnp.float32)[:, :, None, None, None]        # [B, T, 1, 1, 1]
  known = frame_cond.astype(jnp.float32) * mask
  mask = jnp.broadcast_to(mask, frame_cond.shape[:4] + (1,))
  return jnp.concatenate([known, mask], axis=-1)
