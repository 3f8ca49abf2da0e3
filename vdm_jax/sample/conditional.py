"""Conditional sampling of a trained stage by reconstruction guidance or replacement (VDM 3.1).

    stage = stage_lib.load_stage(config, workdir)   # vdm_jax.sample.stage
    videos, boundaries = extend_video(stage, key=key, prompts=prompts, num_frames=32, overlap=4)
    filled = fill_frames(stage, key=key, prompts=prompts, video=video, frame_mask=mask)
    hires = super_resolve_by_guidance(stage, key=key, prompts=prompts, lowres=lowres)

All three condition a stage trained on unconditional (text-to-)video on an observation of the
sample (`diffusion.Observation`): known frames (extension, filling) or a downsampled video
(super-resolution with a stage trained at the high resolution), by VDM's reconstruction
guidance (`method='reconstruction'`, weight w_r) or the replacement baseline
(`method='replacement'`). The sampler settings are the stage's `config.sample` with overrides,
as in `sampler.sample_stage`; every call of one shape and method compiles once (the jitted
sampler is cached on the Stage, and w_r is traced, so every weight shares it).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from vdm_jax import diffusion
from vdm_jax.sample import conditioning as cond_lib
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import stage_sampler

# VDM's w_r in the alpha_t / 2 form. On the Gaussian toy of tests/test_reconstruction_guidance.py
# samples come closest to the true conditional near 5 (1 under-corrects, 10-20 overshoot);
# experiments/extension measures 1 and 5 on the demo base.
DEFAULT_RECONSTRUCTION_WEIGHT = 5.0


def _check_stage(stage: stage_lib.Stage) -> None:
  if stage.is_latent:
    raise ValueError("Conditional sampling guides the sample towards observed pixels; a latent "
                     "stage samples latents (its observations would have to be encoded), "
                     "which is not available: use a pixel stage.")
  if stage.is_sr:
    raise ValueError(f"The {stage.config.stage} stage samples from a low-resolution input; "
                     "conditional sampling by guidance needs a stage that samples from text "
                     "alone (e.g. a base stage, or one trained at the high resolution for SR).")


def _make_fn(stage: stage_lib.Stage, settings: dict, shape: tuple, has_uncond: bool,
             method: str, factor: int):
  run = stage_sampler.make_sample_fn(stage.config, stage.model, settings, shape=shape,
                                     has_uncond=has_uncond)

  def fn(params, key, cond, uncond, init_noise, values, mask, weight):
    return run(params, key, cond, uncond, init_noise,
               observation=diffusion.Observation(values=values, mask=mask, factor=factor),
               observation_method=method, reconstruction_weight=weight)
  return fn


def sample_observed(stage: stage_lib.Stage, *, key: jax.Array, values: np.ndarray,
                    mask: Optional[np.ndarray] = None, factor: int = 1,
                    method: str = "reconstruction",
                    reconstruction_weight: float = DEFAULT_RECONSTRUCTION_WEIGHT,
                    prompts: Optional[Sequence[str]] = None, num_videos: Optional[int] = None,
                    fps: Optional[float] = None, init_noise: Optional[np.ndarray] = None,
                    shared_init_noise: Optional[bool] = None, **overrides) -> np.ndarray:
  """Samples videos float32 [N, T, H, W, C] given the observation y = A(x) of each.

  Args:
    stage: a loaded stage that samples from text (or nothing) alone.
    key: sampler key; the initial noise is `init_noise` or drawn from fold_in(key, 2) as in
      `sampler.sample_stage` (so equal keys give equal noise for every method).
    values: y, float in [-1, 1]: [N, T, H, W, C] (factor 1) or [N, T, H/f, W/f, C].
    mask: 1 where y is observed, [N, T] (frames) or y's shape; None = all of y.
    factor: A's spatial average-pool factor (1 = identity).
    method: 'reconstruction' (weight `reconstruction_weight`) or 'replacement' (factor 1).
    prompts / num_videos, fps: as `sampler.sample_stage`; overrides: `config.sample` settings.
  """
  _check_stage(stage)
  diffusion.reconstruction.check_observation_method(method)
  if method == "replacement" and int(factor) != 1:
    raise ValueError("method='replacement' needs an observation of entries of x (factor 1); "
                     "use 'reconstruction' for a downsampled observation.")
  n = len(prompts) if prompts is not None else num_videos
  if not n:
    raise ValueError("Give prompts or num_videos.")
  c = stage.config
  shape = (n, c.frames, c.height, c.width, c.channels)
  values = np.asarray(values, np.float32)
  mask = None if mask is None else np.asarray(mask).astype(bool)
  diffusion.reconstruction.check_observation(
      diffusion.Observation(values=values, mask=mask, factor=int(factor)), shape)
  settings = stage_sampler.sample_settings(c, overrides)
  cond, uncond = cond_lib.stage_conditioning(stage, prompts=prompts, n=n, fps=fps)
  has_uncond = uncond is not None and settings["guidance_weight"] != 0.0
  noise = cond_lib.initial_noise(c, jax.random.fold_in(key, 2), shape, init_noise=init_noise,
                                 shared_init_noise=shared_init_noise)
  cache_key = ("observation", method, int(factor), None if mask is None else mask.shape,
               tuple(sorted(settings.items())), shape, has_uncond)
  weight = np.full((n,), reconstruction_weight, np.float32)
  return sampler.call_jitted(
      stage, cache_key,
      lambda: _make_fn(stage, settings, shape, has_uncond, method, int(factor)),
      key, cond, uncond if has_uncond else None, noise, values, mask, weight)


def extend_video(stage: stage_lib.Stage, *, key: jax.Array, num_frames: int, overlap: int,
                 prompts: Optional[Sequence[str]] = None, num_videos: Optional[int] = None,
                 init_video: Optional[np.ndarray] = None, method: str = "reconstruction",
                 reconstruction_weight: float = DEFAULT_RECONSTRUCTION_WEIGHT,
                 fps: Optional[float] = None, **overrides) -> tuple[np.ndarray, list[int]]:
  """Extends videos autoregressively to `num_frames` frames with a stage of T frames.

  The first block is `init_video` [N, T0, H, W, C] (T0 >= overlap, kept exactly) or, when None,
  T frames sampled by `sampler.sample_stage` with key fold_in(key, 0). Block i >= 1 (key
  fold_in(key, i)) is sampled with its first `overlap` frames observed: the last `overlap`
  frames of the video so far; its T - overlap new frames are appended (the last block's cut to
  fit). Returns (videos float32 [N, num_frames, H, W, C], boundaries): boundaries[k] is the
  index of the first new frame of block k + 1, e.g. T = 8, overlap = 4, 32 frames:
  [8, 12, 16, 20, 24, 28].
  """
  _check_stage(stage)
  c = stage.config
  frames = int(c.frames)
  if not 0 < overlap < frames:
    raise ValueError(f"overlap={overlap} must lie in [1, {frames - 1}] for a stage of "
                     f"{frames} frames (each block adds frames - overlap new frames).")
  if init_video is None:
    video = sampler.sample_stage(stage, key=jax.random.fold_in(key, 0), prompts=prompts,
                                 num_videos=num_videos, fps=fps, **overrides)
  else:
    video = np.asarray(init_video, np.float32)
    if video.ndim != 5 or video.shape[2:] != (c.height, c.width, c.channels):
      raise ValueError(f"init_video has shape {video.shape}; this stage makes "
                       f"[N, T, {c.height}, {c.width}, {c.channels}] videos.")
    if video.shape[1] < overlap:
      raise ValueError(f"init_video has {video.shape[1]} frames; overlap={overlap} needs at "
                       "least that many.")
    if prompts is not None and len(prompts) != len(video):
      raise ValueError(f"{len(prompts)} prompts for {len(video)} videos.")
  if num_frames < video.shape[1]:
    raise ValueError(f"num_frames={num_frames} is shorter than the first block "
                     f"({video.shape[1]} frames).")
  n = len(video)
  mask = np.zeros((n, frames), bool)
  mask[:, :overlap] = True
  boundaries, block = [], 1
  while video.shape[1] < num_frames:
    values = np.zeros((n, frames) + video.shape[2:], np.float32)
    values[:, :overlap] = video[:, -overlap:]
    new = sample_observed(stage, key=jax.random.fold_in(key, block), values=values, mask=mask,
                          method=method, reconstruction_weight=reconstruction_weight,
                          prompts=prompts, num_videos=n, fps=fps, **overrides)
    boundaries.append(video.shape[1])
    video = np.concatenate([video, new[:, overlap:]], axis=1)[:, :num_frames]
    block += 1
  return video, boundaries


def fill_frames(stage: stage_lib.Stage, *, key: jax.Array, video: np.ndarray,
                frame_mask: np.ndarray, prompts: Optional[Sequence[str]] = None,
                method: str = "reconstruction",
                reconstruction_weight: float = DEFAULT_RECONSTRUCTION_WEIGHT,
                fps: Optional[float] = None, **overrides) -> np.ndarray:
  """Fills the masked frames of `video` [N, T, H, W, C] (float in [-1, 1], T the stage's
  frames): frame_mask bool [N, T] or [T], True = given. Returns [N, T, H, W, C] holding the
  given frames exactly and sampled frames elsewhere."""
  video = np.asarray(video, np.float32)
  mask = np.asarray(frame_mask).astype(bool)
  if mask.ndim == 1 and video.ndim == 5 and mask.shape[0] == video.shape[1]:
    mask = np.broadcast_to(mask, video.shape[:2])
  if mask.shape != video.shape[:2]:
    raise ValueError(f"frame_mask has shape {mask.shape}; videos {video.shape} need "
                     f"{video.shape[:2]} (or [{video.shape[1]}]).")
  return sample_observed(stage, key=key, values=video, mask=mask, method=method,
                         reconstruction_weight=reconstruction_weight, prompts=prompts,
                         num_videos=len(video), fps=fps, **overrides)


def super_resolve_by_guidance(stage: stage_lib.Stage, *, key: jax.Array, lowres: np.ndarray,
                              factor: Optional[int] = None,
                              prompts: Optional[Sequence[str]] = None,
                              reconstruction_weight: float = DEFAULT_RECONSTRUCTION_WEIGHT,
                              fps: Optional[float] = None, **overrides) -> np.ndarray:
  """Spatial SR by reconstruction guidance (VDM): samples the stage (trained at the high
  resolution H x W) with the observation down(x) = lowres [N, T, H/f, W/f, C]. `factor` f
  defaults to H / lowres height. Returns [N, T, H, W, C]."""
  c = stage.config
  lowres = np.asarray(lowres, np.float32)
  if lowres.ndim != 5:
    raise ValueError(f"lowres must be [N, T, h, w, C], got shape {lowres.shape}")
  if factor is None:
    factor = int(c.height) // max(lowres.shape[2], 1)
  if factor < 1 or lowres.shape[2] * factor != c.height or lowres.shape[3] * factor != c.width:
    raise ValueError(f"lowres frames {lowres.shape[2]}x{lowres.shape[3]} times factor {factor} "
                     f"do not give the stage's {c.height}x{c.width}.")
  return sample_observed(stage, key=key, values=lowres, factor=factor,
                         reconstruction_weight=reconstruction_weight, prompts=prompts,
                         num_videos=len(lowres), fps=fps, **overrides)
