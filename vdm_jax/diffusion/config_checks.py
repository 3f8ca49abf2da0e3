"""Checks of the config sections that the diffusion math reads: `diffusion` (schedule,
parameterization, loss, training-time sampling, noise prior, conditioning dropout) and the
sampler keys of `sample`.

Each returns a list of messages naming the key and the fix ([] when valid); the choices are the
tuples the modules define, never restated. `vdm_jax.config_utils.validate_config` collects them.
"""
import math
from typing import Any

from vdm_jax.diffusion import guidance, losses, noise, parameterization, samplers, schedules


def choice_errors(section: Any, prefix: str, choices: dict) -> list[str]:
  """A message per key of `section` whose value is not one of its `choices` {key: tuple}."""
  errors = []
  for key, allowed in choices.items():
    value = section.get(key)
    if value is not None and value not in allowed:
      errors.append(f"{prefix}.{key}={value!r} is not one of {tuple(allowed)}")
  return errors


def diffusion_errors(d) -> list[str]:
  """The `diffusion` section."""
  errors = choice_errors(d, "diffusion", {
      "schedule": schedules.SCHEDULES, "prediction": parameterization.PREDICTIONS,
      "loss_weighting": losses.WEIGHTINGS, "noise_prior": noise.NOISE_PRIORS,
      "t_sampling": losses.T_SAMPLINGS})
  errors += t_sampling_errors(d)
  if d.get("noise_prior", "independent") != "independent" and not float(
      d.get("noise_prior_alpha", 1.0)) > 0.0:
    errors.append(f"diffusion.noise_prior_alpha={d.get('noise_prior_alpha')!r} must be > 0 "
                  f"for noise_prior={d.noise_prior!r}")
  if not d.logsnr_min < d.logsnr_max:
    errors.append(f"diffusion.logsnr_min={d.logsnr_min} must be below "
                  f"diffusion.logsnr_max={d.logsnr_max}")
  scale = d.get("lowres_residual_scale", 0.0)
  if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
    errors.append(f"diffusion.lowres_residual_scale={scale!r} must be a number >= 0 (0 = off)")
  if not 0.0 <= d.cond_drop_prob < 1.0:
    errors.append(f"diffusion.cond_drop_prob={d.cond_drop_prob} must lie in [0, 1)")
  return errors


def t_sampling_errors(d) -> list[str]:
  """The optional time-sampling keys of `diffusion` (t_sampling, logit_normal_mean,
  logit_normal_std; absent = 'uniform', 0.0, 1.0, as configs written before them)."""
  errors = []
  for key, default, positive in (("logit_normal_mean", 0.0, False),
                                 ("logit_normal_std", 1.0, True)):
    value = d.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not math.isfinite(value) or (positive and not value > 0)):
      errors.append(f"diffusion.{key}={value!r} must be a finite number"
                    + (" > 0" if positive else ""))
  if d.get("t_sampling", "uniform") == "logit_normal" and int(d.get("num_train_timesteps", 0)):
    errors.append(f"diffusion.t_sampling='logit_normal' draws continuous t: set "
                  f"diffusion.num_train_timesteps=0 (it is {d.num_train_timesteps}) or "
                  "diffusion.t_sampling='uniform'")
  return errors


def sampler_errors(s) -> list[str]:
  """The sampler keys of the `sample` section."""
  errors = choice_errors(s, "sample", {
      "sampler": samplers.SAMPLERS, "ddpm_variance": samplers.DDPM_VARIANCES,
      "guidance_schedule": guidance.GUIDANCE_SCHEDULES, "clip": guidance.CLIPS})
  if s.num_steps <= 0:
    errors.append(f"sample.num_steps={s.num_steps} must be positive")
  for key in ("eta", "ddpm_var_interp"):
    value = s.get(key)
    if value is not None and not 0.0 <= value <= 1.0:
      errors.append(f"sample.{key}={value} must lie in [0, 1]")
  p = s.get("dynamic_percentile")
  if p is not None and not 0.0 < p <= 1.0:
    hint = f" (a percent? {p:g}% is {p / 100:g})" if 1.0 < p <= 100.0 else ""
    errors.append(f"sample.dynamic_percentile={p} must be a fraction in (0, 1]{hint}")
  for key in ("guidance_weight", "guidance_low"):
    value = s.get(key)
    if value is not None and not math.isfinite(float(value)):
      errors.append(f"sample.{key}={value} must be a finite number")
  return errors
