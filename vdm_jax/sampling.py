"""Sampling and evaluating a trained stage from its workdir (the `sample` and `eval` modes).

    stage = load_stage(config, workdir)                 # EMA parameters of the latest step
    videos = sample_stage(stage, prompts=["a red circle moving left"], key=jax.random.key(0))

`load_stage` restores only what sampling needs onto the config's mesh (one GPU for evaluation
is a mesh of one device). `sample_stage` runs the diffusion sampler of `config.sample` under one
`jax.jit` per shape and settings (cached on the Stage), with classifier-free guidance against
the null text condition. A super-resolution stage takes the previous stage's video as `lowres`;
with conditioning augmentation it is noised to the chosen logSNR (`sample.cond_aug_logsnr` or
the `cond_aug_logsnr` argument) before the model sees it, and that level is fed to the model.
The whole cascade of stages is vdm_jax/cascade.py.

Masked frame interpolation (Make-A-Video, `model.frame_mask_conditioning`): the model gets
known frames and a frame mask. A temporal SR stage built that way (stage 'tsr' with
lowres_conditioning 'none') places the previous stage's T' frames at frames 0, s, 2s, ...
(s = T / T') and fills the rest; `fill_masked_frames` fills any masked frames (interpolation or
extrapolation) of given videos. Either way the known frames are written back into the result,
so they come out exactly as given.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from vdm_jax import diffusion
from vdm_jax import sharding as sharding_lib
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.models import conditioning
from vdm_jax.text import tokenization
from vdm_jax.train import objective


def is_interpolation_stage(config) -> bool:
  """Whether `config` is a temporal SR stage by masked frame interpolation (Make-A-Video)."""
  return config.stage == "tsr" and bool(config.model.get("frame_mask_conditioning", False))


def is_sr_config(config) -> bool:
  """Whether a stage samples from the previous stage's video: SR stages conditioned on the
  low-resolution video, and masked-interpolation temporal SR stages."""
  return (config.model.get("lowres_conditioning", "none") != "none"
          or is_interpolation_stage(config))


def example_batch(config, batch_size: int = 1) -> dict:
  """Zeros laid out like a pipeline batch of `config`'s stage (the shapes init traces)."""
  from vdm_jax.train import objective  # pylint: disable=g-import-not-at-top
  b = {"video": np.zeros((batch_size, config.frames, config.height, config.width,
                          config.channels), np.float32),
       "fps": np.zeros((batch_size,), np.float32),
       "is_image": np.zeros((batch_size,), bool)}
  if objective.needs_text(config.model):
    b["text_emb"] = np.zeros((batch_size, int(config.text.max_length),
                              int(config.model.text_embed_dim)), np.float32)
    b["text_mask"] = np.zeros((batch_size, int(config.text.max_length)), bool)
  if config.model.get("lowres_conditioning", "none") != "none":
    d = config.data
    b["lowres"] = np.zeros((batch_size, int(d.lowres_frames), int(d.lowres_height),
                            int(d.lowres_width), config.channels), np.float32)
  return b


@dataclasses.dataclass
class Stage:
  """A trained stage ready to sample: its config, module, EMA parameters and mesh."""
  config: Any
  model: Any
  params: Any
  step: int
  mesh: Any
  param_shardings: Any
  text_encoder: Optional[Any] = None
  # Jitted samplers by (settings, shape, guided): repeated calls of one shape compile once.
  jit_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def uses_text(self) -> bool:
    from vdm_jax.train import objective  # pylint: disable=g-import-not-at-top
    return objective.needs_text(self.config.model)

  @property
  def is_sr(self) -> bool:
    return is_sr_config(self.config)

  @property
  def uses_frame_masks(self) -> bool:
    return bool(self.config.model.get("frame_mask_conditioning", False))

  @property
  def takes_guidance_weight(self) -> bool:
    """A guided-distillation student: w is a model input and one evaluation per step replaces
    classifier-free guidance's two."""
    return bool(self.config.model.get("guidance_weight_conditioning", False))


def load_stage(config, workdir: str, *, step: Optional[int] = None,
               text_encoder: Optional[Any] = None,
               devices: Optional[Sequence[Any]] = None) -> Stage:
  """Restores the EMA parameters of `workdir`'s checkpoint `step` (default: the latest) onto
  the config's mesh over `devices` (default: all).

  Raises FileNotFoundError when the workdir has no checkpoint, and the checkpointer's
  CheckpointError when it holds another model configuration.
  """
  from vdm_jax.models.unet import SpaceTimeUNet  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import objective  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise ckpt_lib.NoCheckpointError(
        f"No checkpoints under {directory}: train this stage first "
        f"(python -m vdm_jax.main --mode=train --config=... --workdir={workdir}).")
  checkpointer = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise ckpt_lib.NoCheckpointError(f"{directory} holds no complete checkpoint.")
    if step is not None and int(step) not in checkpointer.all_steps():
      raise ckpt_lib.NoCheckpointError(
          f"{directory} has no step {step}; it holds {checkpointer.all_steps()}.")
    mesh = sharding_lib.create_mesh(config.sharding, devices)
    rules = sharding_lib.logical_rules(config.sharding)
    model = SpaceTimeUNet(config=config.model)
    init_fn = objective.init_params_fn(config, model=model, batch_like=example_batch(config))
    target, shardings = state_lib.abstract_train_state(
        init_params_fn=init_fn, key=jax.random.key(int(config.seed)),
        tx=optimizer_lib.make_optimizer(config.train), mesh=mesh, rules=rules)
    if step is None:    # the newest good step; a corrupt newer one is reported, left in place
      state, step = checkpointer.restore_latest(
          target_state=target, data_iter=None, config=config,
          fallback=bool(config.train.get("checkpoint_fallback", True)))
    else:               # the step asked for, or a clear error
      state = checkpointer.restore(int(step), target_state=target, data_iter=None,
                                   config=config)
  finally:
    checkpointer.close()
  if text_encoder is None and objective.needs_text(config.model):
    from vdm_jax import text  # pylint: disable=g-import-not-at-top
    text_encoder = text.load_text_encoder(config.text)
  logging.info("Loaded %s stage from %s (step %d).", config.stage, workdir, step)
  return Stage(config=config, model=model, params=state.ema_params, step=step, mesh=mesh,
               param_shardings=shardings.ema_params, text_encoder=text_encoder)


def load_stage_from_workdir(workdir: str, *, step: Optional[int] = None,
                            text_encoder: Optional[Any] = None,
                            devices: Optional[Sequence[Any]] = None) -> Stage:
  """`load_stage` with the config that `workdir` saved (its config.json): for a training
  workdir or a distillation round directory (`<distill workdir>/rounds/<round>`, whose config
  says how its student samples: model.guidance_weight_conditioning, sample.num_steps)."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: pass a training workdir or a "
                            "distillation round directory.")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  return load_stage(config, workdir, step=step, text_encoder=text_encoder, devices=devices)


def sample_settings(config, overrides: dict) -> dict:
  """The sampler settings of `config.sample` (a flat dict, hashable values) with `overrides`
  (unknown keys raise)."""
  s = config.sample
  out = {"sampler": s.sampler, "num_steps": int(s.num_steps), "eta": float(s.eta),
         "guidance_weight": float(s.guidance_weight), "guidance_schedule": s.guidance_schedule,
         "guidance_low": float(s.get("guidance_low", 1.0)),
         "guidance_const_steps": int(s.get("guidance_const_steps", 0)), "clip": s.clip,
         "dynamic_percentile": float(s.dynamic_percentile),
         "ddpm_variance": s.get("ddpm_variance", "small"),
         "ddpm_var_interp": float(s.get("ddpm_var_interp", 0.5))}
  unknown = set(overrides) - set(out)
  if unknown:
    raise ValueError(f"Unknown sampling settings {sorted(unknown)}; known: {sorted(out)}.")
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


_STATIC = ("sampler", "num_steps", "guidance_schedule", "guidance_const_steps", "clip",
           "ddpm_variance", "shape")


def stage_sampler(stage: Stage, settings: dict, shape: tuple, has_uncond: bool):
  """`run(params, key, cond, uncond, init_noise, **extra)`: `diffusion.sample` of `shape` with
  the stage's model, schedule and prediction and the sampler `settings`
  (`sample_settings`); `extra` goes to `diffusion.sample` as is (e.g. an observation)."""
  c = stage.config
  schedule = diffusion.schedule_from_config(c.diffusion, resolution=c.height)
  noise_fn = noise_lib.noise_fn_from_config(c.diffusion)   # the prior the stage trained with

  def run(params, key, cond, uncond, init_noise, clip_range=None, **extra):
    def model_fn(z, logsnr, cd):
      return stage.model.apply({"params": params}, z, logsnr, **cd, train=False)
    return diffusion.sample(
        model_fn=model_fn, shape=shape, key=key, num_steps=settings["num_steps"],
        schedule=schedule, sampler=settings["sampler"], eta=settings["eta"],
        prediction=c.diffusion.prediction, cond=cond, uncond=uncond if has_uncond else None,
        guidance_weight=settings["guidance_weight"] if has_uncond else 0.0,
        guidance_schedule=settings["guidance_schedule"], guidance_low=settings["guidance_low"],
        guidance_const_steps=settings["guidance_const_steps"], clip=settings["clip"],
        dynamic_percentile=settings["dynamic_percentile"],
        ddpm_variance=settings["ddpm_variance"], ddpm_var_interp=settings["ddpm_var_interp"],
        init_noise=init_noise, noise_fn=noise_fn, clip_range=clip_range, **extra)
  return run


def augment_lowres_at(lowres: np.ndarray, *, key: jax.Array, logsnr: float) -> np.ndarray:
  """Conditioning augmentation at sampling time: the low-resolution video [N, T', H', W', C]
  noised to one chosen level, z = alpha(logsnr) x + sigma(logsnr) eps (diffusion.q_sample)."""
  lowres = jnp.asarray(lowres, jnp.float32)
  eps = jax.random.normal(key, lowres.shape, jnp.float32)
  level = jnp.full((lowres.shape[0],), logsnr, jnp.float32)
  return np.asarray(diffusion.q_sample(x=lowres, eps=eps, logsnr=level))


def cond_aug_level(stage: Stage, cond_aug_logsnr: Optional[float] = None) -> float:
  """The sampling-time augmentation logSNR: the argument, else `sample.cond_aug_logsnr`
  (default: the schedule's logsnr_max, i.e. practically no noise)."""
  if cond_aug_logsnr is not None:
    return float(cond_aug_logsnr)
  c = stage.config
  return float(c.sample.get("cond_aug_logsnr", c.diffusion.logsnr_max))


def known_frames(stage: Stage, *, n: int, lowres: Optional[np.ndarray] = None,
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
    video, mask = (np.asarray(a) for a in conditioning.place_known_frames(low, frames=c.frames))
  elif is_interpolation_stage(c):
    raise ValueError(f"The {c.stage} stage (masked frame interpolation) needs the previous "
                     "stage's video (lowres) to sample, or frame_cond/frame_mask.")
  else:
    video, mask = np.zeros(shape, np.float32), np.zeros(shape[:2], bool)
  return np.where(mask[:, :, None, None, None], video, 0.0).astype(np.float32), mask


def _augment(stage: Stage, video: np.ndarray, cond: dict, *, n: int,
             cond_aug_logsnr: Optional[float], aug_key: Optional[jax.Array]) -> np.ndarray:
  """Conditioning augmentation of a stage's conditioning video (sets cond['cond_aug_logsnr'])."""
  if aug_key is None:
    raise ValueError("A stage with conditioning augmentation needs aug_key to noise its "
                     "low-resolution input.")
  level = cond_aug_level(stage, cond_aug_logsnr)
  cond["cond_aug_logsnr"] = np.full((n,), level, np.float32)
  return augment_lowres_at(video, key=aug_key, logsnr=level)


def stage_conditioning(stage: Stage, *, prompts: Optional[Sequence[str]] = None, n: int,
                       fps: Optional[float] = None, lowres: Optional[np.ndarray] = None,
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


def sample_stage(stage: Stage, *, key: jax.Array, prompts: Optional[Sequence[str]] = None,
                 num_videos: Optional[int] = None, fps: Optional[float] = None,
                 lowres: Optional[np.ndarray] = None, cond_aug_logsnr: Optional[float] = None,
                 init_noise: Optional[np.ndarray] = None,
                 shared_init_noise: Optional[bool] = None,
                 frame_cond: Optional[np.ndarray] = None,
                 frame_mask: Optional[np.ndarray] = None, **overrides) -> np.ndarray:
  """Samples videos float32 [N, T, H, W, C] in [-1, 1] from a loaded stage.

  `overrides` replace `config.sample` settings (num_steps, guidance_weight, sampler, eta, clip,
  ...). Guidance needs text: for a stage without text the weight is ignored; a guided-distilled
  stage (model.guidance_weight_conditioning) takes the weight as an input. SR stages need
  `lowres` [N, T', H', W', C] (the previous stage's output); its augmentation noise is drawn
  from fold_in(key, 1). The initial noise z_1 is `init_noise` or drawn from fold_in(key, 2):
  i.i.d., or with `shared_init_noise` (default `sample.shared_init_noise`) one noise frame
  per video repeated over time.

  A frame-mask stage (model.frame_mask_conditioning) takes its known frames from `lowres` (an
  interpolation TSR stage: the previous stage's frames at a regular stride) or from
  `frame_cond` [N, T, H, W, C] + `frame_mask` [N, T] (see `known_frames`); the returned videos
  hold exactly those frames at the known positions.
  """
  n = len(prompts) if prompts is not None else num_videos
  if not n:
    raise ValueError("Give prompts or num_videos.")
  settings = sample_settings(stage.config, overrides)
  c = stage.config
  shape = (n, c.frames, c.height, c.width, c.channels)
  if lowres is not None:
    lowres = np.asarray(lowres, np.float32)
  known = None
  if stage.uses_frame_masks:
    known = known_frames(stage, n=n, lowres=lowres, frame_cond=frame_cond,
                         frame_mask=frame_mask)
    lowres, frame_cond, frame_mask = None, *known
  cond, uncond = stage_conditioning(stage, prompts=prompts, n=n, fps=fps, lowres=lowres,
                                    cond_aug_logsnr=cond_aug_logsnr,
                                    aug_key=jax.random.fold_in(key, 1), frame_cond=frame_cond,
                                    frame_mask=frame_mask,
                                    guidance_weight=settings["guidance_weight"])
  has_uncond = uncond is not None and settings["guidance_weight"] != 0.0
  noise = initial_noise(c, jax.random.fold_in(key, 2), shape, init_noise=init_noise,
                        shared_init_noise=shared_init_noise)
  # An SR stage trained on its residual over the upsampled lowres (lowres_residual_scale s > 0)
  # samples y = s * (x - upsample(lowres)); static clipping of x to [-1, 1] is then clipping
  # y to [s (-1 - up), s (1 - up)], and the video is up + y / s.
  residual = lowres is not None and not stage.uses_frame_masks and objective.residual_scale(c) > 0
  clip_range = None
  if residual:
    if settings["clip"] == "dynamic":
      raise ValueError("A stage with diffusion.lowres_residual_scale > 0 samples with "
                       "sample.clip 'static' or 'none' (dynamic thresholding has no bounds form).")
    if settings["clip"] == "static":
      up = np.asarray(objective.lowres_upsampled(c, lowres, shape))
      scale = objective.residual_scale(c)
      clip_range = (scale * (-1.0 - up), scale * (1.0 - up))
  cache_key = (tuple(sorted(settings.items())), shape, has_uncond, clip_range is not None)
  jitted = stage.jit_cache.get(cache_key)
  if jitted is None:
    fn = stage_sampler(stage, settings, shape, has_uncond)
    replicated = NamedSharding(stage.mesh, PartitionSpec())
    jitted = jax.jit(fn, in_shardings=(stage.param_shardings, replicated, replicated,
                                       replicated, replicated, replicated),
                     out_shardings=replicated)
    stage.jit_cache[cache_key] = jitted
  args = sharding_lib.replicate((cond, uncond if has_uncond else None, noise, clip_range),
                                stage.mesh)
  with jax.set_mesh(stage.mesh):
    out = jitted(stage.params, key, *args)
  out = np.asarray(jax.device_get(out))
  if residual:
    out = np.asarray(objective.from_residual(c, out, lowres))
  if known is not None:   # the given frames, exactly
    out = np.where(known[1][:, :, None, None, None], known[0], out)
  return out


def fill_masked_frames(stage: Stage, *, key: jax.Array, video: np.ndarray,
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


def sample_stage_batched(stage: Stage, *, key: jax.Array, prompts: Sequence[str],
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


def sample_from_workdir(config, workdir: str, prompts: Sequence[str], *,
                        out_dir: Optional[str] = None, seed: Optional[int] = None) -> list[str]:
  """The `sample` mode: one video per prompt from `workdir`'s latest EMA parameters, written as
  GIF and MP4 (with prompts.txt) under `out_dir` (default workdir/samples/cli)."""
  from vdm_jax.train import video_writer  # pylint: disable=g-import-not-at-top
  stage = load_stage(config, workdir)
  if stage.is_sr:
    raise ValueError(f"{config.stage} stages need a low-resolution input: sample them as part "
                     "of a cascade.")
  key = jax.random.key(int(config.seed if seed is None else seed))
  start = time.perf_counter()
  videos = sample_stage(stage, key=key, prompts=list(prompts))
  seconds = time.perf_counter() - start
  out_dir = out_dir or os.path.join(workdir, "samples", "cli")
  paths = video_writer.write_videos(out_dir, list(videos), fps=float(config.fps),
                                    prompts=list(prompts))
  logging.info("Sampled %d videos in %.1fs; wrote %s.", len(videos), seconds, out_dir)
  print(f"Wrote {len(videos)} videos ({seconds:.1f}s) to {out_dir}")
  return paths


def evaluate_workdir(config, workdir: str, *, out_dir: Optional[str] = None,
                     num_videos: Optional[int] = None) -> dict:
  """The `eval` mode: samples the prompts of the first N held-out (test split) clips and scores
  them (caption accuracy, temporal consistency, FVD against those real clips, sampling time
  per video); writes eval.json and an index.html gallery under `out_dir` (default
  workdir/eval)."""
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import evaluate, gallery  # pylint: disable=g-import-not-at-top
  n = int(num_videos or config.eval.num_videos)
  stage = load_stage(config, workdir)
  if stage.is_sr:
    raise ValueError("Evaluate SR stages as part of a cascade.")
  real = build.load_split_examples(config, "test", n)
  prompts = real["caption"]
  key = jax.random.key(int(config.seed) + 17)
  sample_stage(stage, key=key, prompts=prompts)  # compile once (cached), outside the timing
  start = time.perf_counter()
  videos = sample_stage(stage, key=key, prompts=prompts)
  per_video = (time.perf_counter() - start) / len(prompts)
  stride = max(1, int(round(float(real["fps"][0]) / float(config.fps))))
  real_videos = _resize_like(real["video"][:, ::stride], videos.shape[1:4])
  out_dir = out_dir or os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  results = evaluate.evaluate_videos(
      videos, prompts, real_videos=real_videos,
      fps=float(config.fps), compute_fvd=bool(config.eval.fvd))
  results["seconds_per_video"] = per_video
  results["step"] = stage.step
  results["num_videos"] = len(prompts)
  with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(evaluate._jsonable(results), f, indent=2)  # pylint: disable=protected-access
  entries = []
  gen_u8, real_u8 = evaluate.to_uint8(videos), real_videos
  for i, prompt in enumerate(prompts[:16]):
    g = gallery.write_gif(os.path.join(out_dir, f"gen_{i:03d}.gif"), gen_u8[i],
                          float(config.fps), scale=4)
    r = gallery.write_gif(os.path.join(out_dir, f"real_{i:03d}.gif"), real_u8[i],
                          float(config.fps), scale=4)
    entries.append({"prompt": prompt, "stages": [(config.stage, g)], "real": r})
  gallery.write_gallery(out_dir, entries, figures={"evaluation": _flat_figures(results)},
                        title=f"vdm_jax eval: {workdir}")
  print(f"Wrote {out_dir}/eval.json and index.html")
  return results


def _flat_figures(results: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in results.items():
    if isinstance(v, dict):
      out.update(_flat_figures(v, f"{prefix}{k}."))
    elif isinstance(v, (int, float, np.floating, np.integer, str, bool)):
      out[f"{prefix}{k}"] = v
  return out


def _resize_like(videos: np.ndarray, thw: tuple) -> np.ndarray:
  """uint8 real clips [N, T0, H0, W0, 3] at the stage's fps -> its first T frames at its size."""
  t, h, w = thw
  v = np.asarray(videos)
  if v.shape[1] < t:
    raise ValueError(f"Real clips have {v.shape[1]} frames at the stage's fps; need {t}.")
  v = v[:, :t]
  if v.shape[2:4] != (h, w):
    v = np.asarray(jax.image.resize(jnp.asarray(v, jnp.float32), v.shape[:2] + (h, w, v.shape[4]),
                                    "linear"))
    v = np.clip(np.round(v), 0, 255).astype(np.uint8)
  return v
