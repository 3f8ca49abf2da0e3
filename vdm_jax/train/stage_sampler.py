"""The sampler of a stage as one function to jit: `config.sample` settings -> `diffusion.sample`.

    settings = sample_settings(config, {"num_steps": 16})
    run = make_sample_fn(config, model, settings, shape=(n, T, H, W, C), has_uncond=True)
    videos = jax.jit(run)(params, key, cond, uncond, init_noise, lowres=lowres)

Shared by sampling a loaded stage (`vdm_jax.sample`), conditional sampling by reconstruction
guidance and the periodic samples during training (`samples.py`). `run` holds what every one of
them does the same way: classifier-free guidance against `uncond` (only with `has_uncond`), the
stage's noise prior, and for an SR stage that diffuses its residual over the upsampled input
(`diffusion.lowres_residual_scale` > 0) the static clipping bounds of that residual and the
conversion of the sample back into the video.
"""
from typing import Any, Callable, Optional

from vdm_jax import diffusion
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.train import objective


def sample_settings(config, overrides: Optional[dict] = None) -> dict:
  """The sampler settings of `config.sample` (a flat dict, hashable values) with `overrides`
  (unknown keys raise; None values keep the config's)."""
  s = config.sample
  out = {"sampler": s.sampler, "num_steps": int(s.num_steps), "eta": float(s.eta),
         "guidance_weight": float(s.guidance_weight), "guidance_schedule": s.guidance_schedule,
         "guidance_low": float(s.get("guidance_low", 1.0)),
         "guidance_const_steps": int(s.get("guidance_const_steps", 0)), "clip": s.clip,
         "dynamic_percentile": float(s.dynamic_percentile),
         "ddpm_variance": s.get("ddpm_variance", "small"),
         "ddpm_var_interp": float(s.get("ddpm_var_interp", 0.5))}
  overrides = dict(overrides or {})
  unknown = set(overrides) - set(out)
  if unknown:
    raise ValueError(f"Unknown sampling settings {sorted(unknown)}; known: {sorted(out)}.")
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


def residual_clip_range(config, clip: str, lowres: Any, shape: tuple) -> Optional[tuple]:
  """Static clipping of an SR stage that samples its residual y = s * (x - upsample(lowres))
  (`diffusion.lowres_residual_scale` s > 0): clipping x to [-1, 1] is clipping y to
  [s (-1 - up), s (1 - up)]. None without a residual or static clipping; dynamic thresholding
  has no bounds form and raises. Works on host and on traced arrays."""
  scale = objective.residual_scale(config)
  if lowres is None or scale <= 0:
    return None
  if clip == "dynamic":
    raise ValueError("A stage with diffusion.lowres_residual_scale > 0 samples with "
                     "sample.clip 'static' or 'none' (dynamic thresholding has no bounds form).")
  if clip != "static":
    return None
  up = objective.lowres_upsampled(config, lowres, shape)
  return (scale * (-1.0 - up), scale * (1.0 - up))


def make_sample_fn(config, model, settings: dict, *, shape: tuple,
                   has_uncond: bool) -> Callable[..., Any]:
  """`run(params, key, cond, uncond, init_noise, lowres=None, **extra)`: `diffusion.sample` of
  `shape` with `model` (a Flax module applied to `params`), the stage's schedule, prediction
  and noise prior, and the sampler `settings` (`sample_settings`).

  Guidance (the settings' weight) runs against `uncond` only with `has_uncond`; `init_noise`
  None draws z_1 from `key`. `lowres` is an SR stage's clean low-resolution input: a stage
  that diffuses its residual over it gets its clipping bounds from it (`residual_clip_range`)
  and `run` returns the video, upsample(lowres) + y / s. `extra` goes to `diffusion.sample` as
  is (e.g. an observation for reconstruction guidance).
  """
  schedule = diffusion.schedule_from_config(config.diffusion, resolution=config.height)
  noise_fn = noise_lib.noise_fn_from_config(config.diffusion)  # the prior the stage trained with

  def run(params, key, cond, uncond, init_noise, lowres=None, **extra):
    def model_fn(z, logsnr, cd):
      return model.apply({"params": params}, z, logsnr, **cd, train=False)
    out = diffusion.sample(
        model_fn=model_fn, shape=shape, key=key, num_steps=settings["num_steps"],
        schedule=schedule, sampler=settings["sampler"], eta=settings["eta"],
        prediction=config.diffusion.prediction, cond=cond,
        uncond=uncond if has_uncond else None,
        guidance_weight=settings["guidance_weight"] if has_uncond else 0.0,
        guidance_schedule=settings["guidance_schedule"], guidance_low=settings["guidance_low"],
        guidance_const_steps=settings["guidance_const_steps"], clip=settings["clip"],
        dynamic_percentile=settings["dynamic_percentile"],
        ddpm_variance=settings["ddpm_variance"], ddpm_var_interp=settings["ddpm_var_interp"],
        init_noise=init_noise, noise_fn=noise_fn,
        clip_range=residual_clip_range(config, settings["clip"], lowres, shape), **extra)
    if lowres is not None:   # an SR stage diffusing its residual: back to the video
      out = objective.from_residual(config, out, lowres)
    return out
  return run
