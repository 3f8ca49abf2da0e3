"""What a stage samples from: its model inputs (text, fps, low-resolution video or known frames,
conditioning augmentation, guidance weight) and its initial noise.

    cond, uncond = stage_conditioning(stage, prompts=prompts, n=2, lowres=lowres, aug_key=key)
    z1 = initial_noise(stage.config, key, shape, shared_init_noise=True)

A super-resolution stage takes the previous stage's video as `lowres`; with conditioning
augmentation it is noised to the chosen logSNR (`sample.cond_aug_logsnr` or the
`cond_aug_logsnr` argument) before the model sees it, and that level is fed to the model.

Masked frame interpolation (Make-A-Video, `model.frame_mask_conditioning`): the model gets
known frames and a frame mask. A temporal SR stage built that way (stage 'tsr' with
lowres_conditioning 'none') places the previous stage's T' frames at frames 0, s, 2s, ...
(s = T / T'); `known_frames` lays them out (or takes given frames and mask).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.models import conditioning as model_conditioning
from vdm_jax.sample import stage as stage_lib
from vdm_jax.text import tokenization


def augment_lowres_at(lowres: np.ndarray, *, key: jax.Array, logsnr: float) -> np.ndarray:
  """Conditioning augmentation at sampling time: the low-resolution video [N, T', H', W', C]
  noised to one chosen level, z = alpha(logsnr) x + sigma(logsnr) eps (diffusion.q_sample)."""
  lowres = jnp.asarray(lowres, jnp.float32)
  eps = jax.random.normal(key, lowres.shape, jnp.float32)
  level = jnp.full((lowres.shape[0],), logsnr, jnp.float32)
  return np.asarray(diffusion.q_sample(x=lowres, eps=eps, logsnr=level))


def cond_aug_level(stage: stage_lib.Stage, cond_aug_logsnr: Optional[float] = None) -> float:
  """The sampling-time augmentation logSNR: the argument, else `sample.cond_aug_logsnr`
  (default: the schedule's logsnr_max, i.e. practically no noise)."""
  if cond_aug_logsnr is not None:
    return float(cond_aug_logsnr)
  c = stage.config
  return float(c.sample.get("cond_aug_logsnr", c.diffusion.logsnr_max))


def known_frames(stage: stage_lib.Stage, *, n: int, lowres: Optional[np.ndarray] = None,
                 frame_cond: Optional[np.ndarray] = None,
                 frame_mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
  """The known frames of a frame-mask stage: (frame_cond float32 [n, T, H, W, C], zeros where
  unknown; frame_mask bool [n, T]).

  From `frame_cond` + `frame_mask` as given; else from `lowres` [n, T', H, W, C] placed at
  frames 0, s, 2s, ... (s = T / T'); else none known (plain generation; an interpolation TSR
  stage refuses that: it needs the previous stage's video).
  """
  c = stage.config
  shape = (n, c.frames, c.height, c.width, c.channels)
  if (frame_cond is None) != (frame_mask is None):
    raise ValueError("Give both frame_cond (the videos) and frame_mask (which frames are known).")
  if frame_cond is not None:
    if lowres is not None:
      raise ValueError("Give either lowres or frame_cond/frame_mask, not both.")
    video = np.asarray(frame_cond, np.float32)
    mask = np.asarray(frame_mask)
    if video.shape != shape:
      raise ValueError(f"frame_cond has shape {video.shape}; this stage samples {shape}.")
    if mask.shape != shape[:2] or not np.isin(mask, (0, 1)).all():
      raise ValueError(f"frame_mask must be bool (or 0/1) of shape {shape[:2]} (True = known "
                       f"frame), got {mask.dtype} {mask.shape}.")
    mask = mask.astype(bool)
  elif lowres is not None:
    low = np.asarray(lowres, np.float32)
    if low.ndim != 5 or (low.shape[0],) + low.shape[2:] != (n,) + shape[2:]:
      raise ValueError(f"lowres has shape {low.shape}; an interpolation stage takes the previous "
                       f"stage's [{n}, T', {c.height}, {c.width}, {c.channels}] video.")
    video, mask = (np.asarray(a)
                   for a in model_conditioning.place_known_frames(low, frames=c.frames))
  elif stage_lib.is_interpolation_stage(c):
    raise ValueError(f"The {c.stage} stage (masked frame interpolation) needs the previous "
                     "stage's video (lowres) to sample, or frame_cond/frame_mask.")
  else:
    video, mask = np.zeros(shape, np.float32), np.zeros(shape[:2], bool)
  return np.where(mask[:, :, None, None, None], video, 0.0).astype(np.float32), mask


def _augment(stage: stage_lib.Stage, video: np.ndarray, cond: dict, *, n: int,
             cond_aug_logsnr: Optional[float], aug_key: Optional[jax.Array]) -> np.ndarray:
  """Conditioning augmentation of a stage's conditioning video (sets cond['cond_aug_logsnr'])."""
  if aug_key is None:
    raise ValueError("A stage with conditioning augmentation needs aug_key to noise its "
                     "low-resolution input.")
  level = cond_aug_level(stage, cond_aug_logsnr)
  cond["cond_aug_logsnr"] = np.full((n,), level, np.float32)
  return augment_lowres_at(video, key=aug_key, logsnr=level)


def stage_conditioning(stage: stage_lib.Stage, *, prompts: Optional[Sequence[str]] = None,
                       n: int, fps: Optional[float] = None, lowres: Optional[np.ndarray] = None,
                       cond_aug_logsnr: Optional[float] = None,
                       aug_key: Optional[jax.Array] = None,
                       frame_cond: Optional[np.ndarray] = None,
                       frame_mask: Optional[np.ndarray] = None,
                       guidance_weight: Optional[float] = None) -> tuple[dict, Optional[dict]]:
  """(cond, uncond) model inputs for `n` videos: text from `prompts` (the null condition for
  uncond), fps, the low-resolution video for SR stages and, with conditioning augmentation,
  that video noised with `aug_key` to `cond_aug_level(...)` together with the level.

  A guidance-weight-conditioned stage (a guided-distillation student) gets w =
  `guidance_weight` (default `sample.guidance_weight`) as an input and no uncond: it samples
  with one network evaluation per step.

  A frame-mask stage gets frame_cond/frame_mask from `known_frames(lowres=..., frame_cond=...,
  frame_mask=...)` instead, its known frames augmented the same way (zeros stay zeros)."""
  m = stage.config.model
  cond: dict = {}
  uncond: Optional[dict] = None
  if stage.uses_text:
    if prompts is None or len(prompts) != n:
      raise ValueError(f"A text-conditioned stage needs one prompt per video ({n}).")
    # A user's prompts: an empty one is refused naming it ("" is the sampler's own null
    # condition); cut prompts and unknown characters warn.
    emb, mask = stage.text_encoder.encode(tokenization.check_prompts(prompts, allow_empty=False))
    cond["text_emb"], cond["text_mask"] = emb, mask
  if m.get("fps_conditioning", False):
    cond["fps"] = np.full((n,), float(stage.config.fps if fps is None else fps), np.float32)
  if stage.uses_frame_masks:
    video, mask = known_frames(stage, n=n, lowres=lowres, frame_cond=frame_cond,
                               frame_mask=frame_mask)
    if m.get("cond_aug_conditioning", False):
      video = np.where(mask[:, :, None, None, None],
                       _augment(stage, video, cond, n=n, cond_aug_logsnr=cond_aug_logsnr,
                                aug_key=aug_key), 0.0).astype(np.float32)
    cond["frame_cond"], cond["frame_mask"] = video, mask
  elif frame_cond is not None or frame_mask is not None:
    raise ValueError(f"frame_cond/frame_mask given, but the {stage.config.stage} stage has no "
                     "model.frame_mask_conditioning.")
  elif stage.is_sr:
    if lowres is None:
      raise ValueError(f"The {stage.config.stage} stage needs the previous stage's video "
                       "(lowres) to sample.")
    lowres = np.asarray(lowres, np.float32)
    if lowres.shape[0] != n:
      raise ValueError(f"lowres holds {lowres.shape[0]} videos for {n} samples.")
    if m.get("cond_aug_conditioning", False):
      lowres = _augment(stage, lowres, cond, n=n, cond_aug_logsnr=cond_aug_logsnr,
                        aug_key=aug_key)
    cond["lowres_video"] = lowres
  if stage.takes_guidance_weight:
    w = float(stage.config.sample.guidance_weight if guidance_weight is None else guidance_weight)
    cond["guidance_weight"] = np.full((n,), w, np.float32)
    return cond, None
  if stage.uses_text:
    uncond = dict(cond)
    uncond["text_emb"] = np.zeros_like(cond["text_emb"])
    uncond["text_mask"] = np.zeros_like(cond["text_mask"])
  return cond, uncond


def shared_frame_noise(key: jax.Array, shape: Sequence[int]) -> np.ndarray:
  """Initial noise z_1 [N, T, H, W, C] with ONE noise frame per video repeated over all T frames
  (Make-A-Video's shared initialization, for consistent detail across frames)."""
  n, t = shape[0], shape[1]
  frame = jax.random.normal(key, (n, 1) + tuple(shape[2:]), jnp.float32)
  return np.asarray(jnp.broadcast_to(frame, (n, t) + tuple(shape[2:])))


def initial_noise(config, key: jax.Array, shape: Sequence[int], *,
                  init_noise: Optional[np.ndarray] = None,
                  shared_init_noise: Optional[bool] = None) -> np.ndarray:
  """z_1 of a stage's sampler: `init_noise` as given; else with `shared_init_noise` (default
  `sample.shared_init_noise`) one noise frame per video repeated over time; else a draw from
  the stage's noise prior (`diffusion.noise_prior`, i.i.d. by default)."""
  shape = tuple(shape)
  if shared_init_noise is None:
    shared_init_noise = bool(config.sample.get("shared_init_noise", False))
  if init_noise is not None:
    noise = np.asarray(init_noise, np.float32)
  elif shared_init_noise:
    noise = shared_frame_noise(key, shape)
  else:
    noise = np.asarray(noise_lib.draw(noise_lib.noise_fn_from_config(config.diffusion), key,
                                      shape, jnp.float32))
  if noise.shape != shape:
    raise ValueError(f"init_noise has shape {noise.shape}; this stage samples {shape}.")
  return noise
