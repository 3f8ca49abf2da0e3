"""Config helpers: variant arguments (`configs/x.py:key=value,...`) and checks before compiling.

`validate_config` is called by every entry point before anything is traced, so that a wrong
value fails in a second with a message that says what is wrong and what to do, instead of deep
inside an XLA compile.
"""
from __future__ import annotations

import math
from typing import Any, Dict

from vdm_jax import errors as errors_lib

_CHOICES = {
    "stage": ("base", "ssr", "tsr"),
    "model.attention_impl": ("xla", "cudnn", "splash"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "diffusion.schedule": ("cosine", "shifted_cosine", "linear"),
    "diffusion.prediction": ("v", "eps", "x"),
    "data.name": ("moving_shapes", "moving_shapes_images", "video_folder"),
    "text.encoder": ("minilm", "t5", "none"),
    "train.optimizer": ("adam", "adamw"),
    "train.lr_schedule": ("warmup_cosine", "constant"),
    "sample.sampler": ("ddim", "ddpm"),
    "sample.guidance_schedule": ("constant", "oscillating"),
    "sample.clip": ("none", "static", "dynamic"),
    "sample.ddpm_variance": ("small", "large", "interp"),
    "data.video_short_clips": ("pad", "skip"),
    "data.image_source": ("frames", "moving_shapes_images"),
}


def parse_variant(arg: str | None) -> Dict[str, str]:
  """Parses a config variant string `key=value,key2=value2` (or a bare `name`) into a dict."""
  out: Dict[str, str] = {}
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      k, v = part.split("=", 1)
      out[k.strip()] = v.strip()
    else:
      out[part] = "true"
  return out


def apply_overrides(config, items) -> None:
  """Sets `key.path=value` strings on a config in place; values are Python literals when they
  parse as one (`3e-4`, `(1, 2)`, `True`), strings otherwise."""
  import ast  # pylint: disable=g-import-not-at-top
  for item in items:
    key, _, value = item.partition("=")
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    try:
      node[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[last] = value


def _get(config, dotted: str) -> Any:
  node = config
  for name in dotted.split("."):
    if name not in node:
      return None
    node = node[name]
  return node


def frame_mask_errors(config) -> list:
  """What is wrong with the masked-frame-interpolation keys (model.frame_mask_conditioning,
  train.frame_mask_patterns / frame_mask_weights) of a stage config; [] when fine or off."""
  m = config.model
  flag = m.get("frame_mask_conditioning", False)
  if not isinstance(flag, bool):
    return [f"model.frame_mask_conditioning={flag!r} must be True or False"]
  if not flag:
    return []
  from vdm_jax.models import conditioning  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import objective  # pylint: disable=g-import-not-at-top
  errors = []
  if m.get("lowres_conditioning", "none") != "none":
    errors.append("model.frame_mask_conditioning and model.lowres_conditioning="
                  f"{m.lowres_conditioning!r} both give the model known frames; use one (an "
                  "interpolation TSR stage sets lowres_conditioning='none')")
  window = int(config.data.get("crop_frames", 0) or config.frames)
  try:
    patterns, _ = objective.frame_mask_settings(config.train)
    conditioning.frame_mask_table(patterns, window)
  except ValueError as e:
    return errors + [f"train.frame_mask_patterns / frame_mask_weights: {e}"]
  low = int(config.data.get("lowres_frames", 0))
  if config.stage == "tsr":
    if not low or config.frames % low:
      errors.append(f"an interpolation TSR stage needs data.lowres_frames (the previous stage's "
                    f"frames) dividing frames={config.frames}; got {low}")
    elif f"stride:{config.frames // low}" not in patterns:
      errors.append(f"train.frame_mask_patterns={patterns} must include "
                    f"'stride:{config.frames // low}': the interpolation TSR stage samples with "
                    f"every {config.frames // low}th frame known")
  return errors


ConfigError = errors_lib.ConfigError   # re-exported: callers catch config_utils.ConfigError


def _library_choices() -> Dict[str, tuple]:
  """The choices that the library's own modules define (imported here, not at module import,
  so that reading a config does not import jax)."""
  from vdm_jax.diffusion import losses, noise  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import unet_spec  # pylint: disable=g-import-not-at-top
  return {
      "model.lowres_conditioning": unet_spec.LOWRES_CONDITIONING,
      "model.temporal_position": unet_spec.TEMPORAL_POSITIONS,
      "model.frame_position": unet_spec.FRAME_POSITIONS,
      "diffusion.loss_weighting": losses.WEIGHTINGS,
      "diffusion.noise_prior": noise.NOISE_PRIORS,
  }


def validate_config(config) -> None:
  """Checks a full experiment config; raises ConfigError naming the key and the fix."""
  errors = []
  for key, choices in {**_CHOICES, **_library_choices()}.items():
    value = _get(config, key)
    if value is not None and value not in choices:
      errors.append(f"{key}={value!r} is not one of {choices}")
  m = config.model
  levels = len(m.channel_mult)
  for key in ("spatial_attention", "temporal_mixing", "cross_attention_levels"):
    if key == "cross_attention_levels" and not m.get(key, ()):
      continue                     # () = the levels with spatial attention
    if len(m[key]) != levels:
      errors.append(
          f"model.{key} has {len(m[key])} entries but model.channel_mult has {levels} levels; "
          "give one entry per level")
  from vdm_jax.models import unet_spec  # pylint: disable=g-import-not-at-top
  for mode in m.temporal_mixing:
    if mode not in unet_spec.TEMPORAL_MIXING:
      errors.append(f"model.temporal_mixing entry {mode!r} is not one of "
                    + "|".join(unet_spec.TEMPORAL_MIXING))
  down = 2 ** (levels - 1)
  if config.height % down or config.width % down:
    errors.append(
        f"height x width = {config.height}x{config.width} must be divisible by {down} "
        f"(the U-Net halves space {levels - 1} times); change the size or model.channel_mult")
  for key in ("base_channels", "num_groups"):
    if m[key] <= 0:
      errors.append(f"model.{key} must be positive, got {m[key]}")
  if m.base_channels % m.num_groups:
    errors.append(f"model.base_channels={m.base_channels} must be divisible by "
                  f"model.num_groups={m.num_groups}")
  vocabulary = config.data.get("vocabulary", None)
  if vocabulary is not None and str(config.data.get("name", "")).startswith("moving_shapes"):
    from vdm_jax.data import procedural  # pylint: disable=g-import-not-at-top
    try:
      procedural.check_vocabulary(dict(vocabulary.items()))
    except ValueError as e:
      errors.append(f"data.vocabulary: {e}")
  d = config.diffusion
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
  elif scale > 0:
    if m.get("lowres_conditioning", "none") == "none":
      errors.append("diffusion.lowres_residual_scale > 0 diffuses the residual over the "
                    "upsampled low-resolution input: it needs an SR stage "
                    "(model.lowres_conditioning 'spatial' or 'temporal')")
    if config.sample.get("clip") == "dynamic":
      errors.append("diffusion.lowres_residual_scale > 0 needs sample.clip 'static' or 'none' "
                    "(static clipping keeps the video in [-1, 1]; dynamic thresholding has no "
                    "form for a residual)")
  if not 0.0 <= d.cond_drop_prob < 1.0:
    errors.append(f"diffusion.cond_drop_prob={d.cond_drop_prob} must lie in [0, 1)")
  t = config.train
  if t.batch_size <= 0 or t.num_steps < 0:
    errors.append("train.batch_size must be positive and train.num_steps non-negative")
  if t.grad_accum_steps <= 0 or t.batch_size % t.grad_accum_steps:
    errors.append(f"train.batch_size={t.batch_size} must be divisible by "
                  f"train.grad_accum_steps={t.grad_accum_steps}")
  if not (0.0 <= t.ema_decay < 1.0):
    errors.append(f"train.ema_decay={t.ema_decay} must lie in [0, 1)")
  if not math.isfinite(t.lr) or t.lr <= 0:
    errors.append(f"train.lr={t.lr} must be a positive number")
  errors += frame_mask_errors(config)
  s = config.sample
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
  if errors:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))
