"""Sampling a loaded stage: videos from prompts (and the previous stage's video, or known frames).

    stage = stage_lib.load_stage(config, workdir)   # vdm_jax.sample.stage
    videos = sample_stage(stage, prompts=["a red circle moving left"], key=jax.random.key(0))

`sample_stage` runs the stage's sampler (`vdm_jax.train.stage_sampler`, the settings of
`config.sample` with overrides) under one `jax.jit` per shape and settings, cached on the Stage,
with classifier-free guidance against the null text condition. A super-resolution stage takes
the previous stage's video as `lowres` (see `conditioning.stage_conditioning`). A latent stage
samples its normalized latents and returns them decoded by its autoencoder (`stage.codec`):
videos at `stage_lib.video_config(config)`'s geometry. The whole cascade of stages is
`cascade.py`.

A frame-mask stage (Make-A-Video's masked frame interpolation) fills the frames it does not
know: the previous stage's frames placed at a regular stride, or any masked frames of given
videos (`fill_masked_frames`: interpolation or extrapolation). Either way the known frames are
written back into the result, so they come out exactly as given.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from vdm_jax import sharding as sharding_lib
from vdm_jax.sample import conditioning as cond_lib
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import stage_sampler


def call_jitted(stage: stage_lib.Stage, cache_key: Hashable, make_fn: Callable[[], Callable],
                key: jax.Array, *args: Any) -> np.ndarray:
  """Runs `make_fn()` (a function of (params, key, *args)) jitted once per `cache_key` and
  cached on the stage, on the stage's parameters (on their shardings), `key` and the host
  values `args` (replicated over the stage's mesh); returns the result on the host."""
  jitted = stage.jit_cache.get(cache_key)
  if jitted is None:
    replicated = NamedSharding(stage.mesh, PartitionSpec())
    jitted = jax.jit(make_fn(), in_shardings=(stage.param_shardings,) + (replicated,) * (
        len(args) + 1), out_shardings=replicated)
    stage.jit_cache[cache_key] = jitted
  args = sharding_lib.replicate(args, stage.mesh)
  with jax.set_mesh(stage.mesh):
    out = jitted(stage.params, key, *args)
  return np.asarray(jax.device_get(out))


def sample_stage(stage: stage_lib.Stage, *, key: jax.Array,
                 prompts: Optional[Sequence[str]] = None, num_videos: Optional[int] = None,
                 fps: Optional[float] = None, lowres: Optional[np.ndarray] = None,
                 cond_aug_logsnr: Optional[float] = None,
                 init_noise: Optional[np.ndarray] = None,
                 shared_init_noise: Optional[bool] = None,
                 frame_cond: Optional[np.ndarray] = None,
                 frame_mask: Optional[np.ndarray] = None, **overrides) -> np.ndarray:
  """Samples videos float32 [N, T, H, W, C] in [-1, 1] from a loaded stage (a latent stage's
  decoded: T, H, W, C of `stage_lib.video_config`).

  `overrides` replace `config.sample` settings (num_steps, guidance_weight, sampler, eta, clip,
  ...). Guidance needs text: for a stage without text the weight is ignored; a guided-distilled
  stage (model.guidance_weight_conditioning) takes the weight as an input. SR stages need
  `lowres` [N, T', H', W', C] (the previous stage's output); its augmentation noise is drawn
  from fold_in(key, 1). The initial noise z_1 is `init_noise` or drawn from fold_in(key, 2):
  i.i.d., or with `shared_init_noise` (default `sample.shared_init_noise`) one noise frame
  per video repeated over time.

  A frame-mask stage (model.frame_mask_conditioning) takes its known frames from `lowres` (an
  interpolation TSR stage: the previous stage's frames at a regular stride) or from
  `frame_cond` [N, T, H, W, C] + `frame_mask` [N, T] (see `conditioning.known_frames`); the
  returned videos hold exactly those frames at the known positions.
  """
  n = len(prompts) if prompts is not None else num_videos
  if not n:
    raise ValueError("Give prompts or num_videos.")
  settings = stage_sampler.sample_settings(stage.config, overrides)
  c = stage.config
  shape = (n, c.frames, c.height, c.width, c.channels)
  if lowres is not None:
    lowres = np.asarray(lowres, np.float32)
  known = None
  if stage.uses_frame_masks:
    known = cond_lib.known_frames(stage, n=n, lowres=lowres, frame_cond=frame_cond,
                                  frame_mask=frame_mask)
    lowres, frame_cond, frame_mask = None, *known
  cond, uncond = cond_lib.stage_conditioning(
      stage, prompts=prompts, n=n, fps=fps, lowres=lowres, cond_aug_logsnr=cond_aug_logsnr,
      aug_key=jax.random.fold_in(key, 1), frame_cond=frame_cond, frame_mask=frame_mask,
      guidance_weight=settings["guidance_weight"])
  has_uncond = uncond is not None and settings["guidance_weight"] != 0.0
  noise = cond_lib.initial_noise(c, jax.random.fold_in(key, 2), shape, init_noise=init_noise,
                                 shared_init_noise=shared_init_noise)
  # `lowres` (clean, not augmented) turns the sample of an SR stage that diffuses its
  # residual over the upsampled input back into the video (`stage_sampler.make_sample_fn`).
  out = call_jitted(
      stage, (tuple(sorted(settings.items())), shape, has_uncond),
      lambda: stage_sampler.make_sample_fn(c, stage.model, settings, shape=shape,
                                           has_uncond=has_uncond),
      key, cond, uncond if has_uncond else None, noise, lowres)
  if known is not None:   # the given frames, exactly
    out = np.where(known[1][:, :, None, None, None], known[0], out)
  if stage.codec is not None:   # a latent stage: normalized latents -> pixels
    out = stage.codec.decode(out)
  return out


def fill_masked_frames(stage: stage_lib.Stage, *, key: jax.Array, video: np.ndarray,
                       frame_mask: np.ndarray, prompts: Optional[Sequence[str]] = None,
                       fps: Optional[float] = None, **kwargs) -> np.ndarray:
  """Fills the unknown frames of `video` [N, T, H, W, C] (in [-1, 1]; any values where
  unknown) with a frame-mask stage: frame_mask bool [N, T], True = known (e.g. every k-th frame:
  interpolation; the first m: extrapolation). Returns [N, T, H, W, C] equal to `video` at the
  known frames. `prompts` (one per video) for a text-conditioned stage; `kwargs` go to
  `sample_stage` (num_steps, guidance_weight, cond_aug_logsnr, ...)."""
  if not stage.uses_frame_masks:
    raise ValueError(f"The {stage.config.stage} stage has no model.frame_mask_conditioning; "
                     "fill frames with a masked-interpolation stage.")
  video = np.asarray(video, np.float32)
  if prompts is not None and len(prompts) != len(video):
    raise ValueError(f"{len(prompts)} prompts for {len(video)} videos.")
  return sample_stage(stage, key=key, prompts=prompts, num_videos=len(video), fps=fps,
                      frame_cond=video, frame_mask=frame_mask, **kwargs)


def sample_stage_batched(stage: stage_lib.Stage, *, key: jax.Array, prompts: Sequence[str],
                         batch_size: int = 0, lowres: Optional[np.ndarray] = None,
                         **kwargs) -> np.ndarray:
  """`sample_stage` over chunks of `batch_size` prompts (0: all at once), chunk i with key
  fold_in(key, i); the last chunk is padded with repeats of its first prompt, so every chunk
  has one shape and compiles once. Returns [len(prompts), T, H, W, C]."""
  prompts = list(prompts)
  n = len(prompts)
  size = n if batch_size <= 0 else min(int(batch_size), n)
  out = []
  for i, start in enumerate(range(0, n, size)):
    idx = list(range(start, min(start + size, n)))
    idx += [idx[0]] * (size - len(idx))  # pad to the chunk shape
    low = None if lowres is None else np.asarray(lowres)[idx]
    videos = sample_stage(stage, key=jax.random.fold_in(key, i),
                          prompts=[prompts[j] for j in idx], lowres=low, **kwargs)
    out.append(videos[:min(size, n - start)])
  return np.concatenate(out, axis=0)
