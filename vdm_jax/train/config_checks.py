"""Checks of the `train` section (optimizer, batch, cadences) and of the objective's keys that
span sections (masked frame interpolation, SR residual diffusion); each returns a list of
messages naming the key and the fix ([] when valid). `vdm_jax.config_utils.validate_config`
collects them; the loop raises the first before compiling."""
from vdm_jax.models import conditioning
from vdm_jax.models import registry
from vdm_jax.train import objective
from vdm_jax.train import optimizer


def train_errors(config) -> list[str]:
  """The `train` section."""
  t = config.train
  errors = optimizer.optimizer_errors(t)
  for key in ("batch_size", "num_steps", "log_every", "checkpoint_every",
              "max_consecutive_nonfinite"):
    if int(t[key]) < 1:
      errors.append(f"train.{key}={t[key]} must be >= 1")
  for key in ("sample_every", "keep_every", "keep_last"):
    if int(t[key]) < 0:
      errors.append(f"train.{key}={t[key]} must be >= 0 (0 turns it off)")
  if t.grad_accum_steps >= 1 and t.batch_size % t.grad_accum_steps:
    errors.append(f"train.batch_size={t.batch_size} must be divisible by "
                  f"train.grad_accum_steps={t.grad_accum_steps}")
  return errors + pack_errors(config)


def pack_errors(config) -> list[str]:
  """train.pack_images: joint training with packed rows needs a model that takes packed
  sequences (the video transformer), extra images, and no per-frame conditioning."""
  if not config.train.get("pack_images", False):
    return []
  errors = []
  if registry.family_name(config.model) != "dit":
    errors.append("train.pack_images=True packs each video with its images into one sequence: "
                  "it needs model.family='dit' (the U-Net runs images as their own group; "
                  "set pack_images=False)")
  if int(config.data.images_per_video) < 1:
    errors.append("train.pack_images=True but data.images_per_video=0: there are no images "
                  "to pack; set images_per_video > 0 or pack_images=False")
  model = config.model
  if model.get("lowres_conditioning", "none") != "none" or model.get(
      "frame_mask_conditioning", False):
    errors.append("train.pack_images=True is for base stages: an SR or masked-interpolation "
                  "model (lowres_conditioning / frame_mask_conditioning) trains unpacked")
  return errors


def frame_mask_errors(config) -> list[str]:
  """What is wrong with the masked-frame-interpolation keys (a model taking known frames,
  train.frame_mask_patterns / frame_mask_weights) of a stage config; [] when fine or off."""
  if not registry.family(config.model).takes_frame_masks:
    return []
  window = int(config.data.get("crop_frames", 0) or config.frames)
  try:
    patterns, _ = objective.frame_mask_settings(config.train)
    conditioning.frame_mask_table(patterns, window)
  except ValueError as e:
    return [f"train.frame_mask_patterns / frame_mask_weights: {e}"]
  errors = []
  low = int(config.data.get("lowres_frames", 0))
  if config.stage == "tsr":
    try:
      k = conditioning.temporal_factor(config.frames, low)
    except ValueError as e:
      errors.append(f"an interpolation TSR stage needs data.lowres_frames (the previous stage's "
                    f"frames) at a regular stride in frames={config.frames}; got {low}: {e}")
    else:
      if f"stride:{k}" not in patterns:
        errors.append(f"train.frame_mask_patterns={patterns} must include 'stride:{k}': the "
                      f"interpolation TSR stage samples with every {k}th frame known")
  return errors


def residual_errors(config) -> list[str]:
  """`diffusion.lowres_residual_scale` > 0 needs an SR stage and a sampler clip with bounds."""
  scale = config.diffusion.get("lowres_residual_scale", 0.0)
  if not isinstance(scale, (int, float)) or not scale > 0:
    return []
  errors = []
  if not registry.family(config.model).takes_lowres:
    errors.append("diffusion.lowres_residual_scale > 0 diffuses the residual over the "
                  "upsampled low-resolution input: it needs an SR stage "
                  "(model.lowres_conditioning 'spatial' or 'temporal')")
  if config.sample.get("clip") == "dynamic":
    errors.append("diffusion.lowres_residual_scale > 0 needs sample.clip 'static' or 'none' "
                  "(static clipping keeps the video in [-1, 1]; dynamic thresholding has no "
                  "form for a residual)")
  return errors


def objective_errors(config) -> list[str]:
  """The train section and the objective's cross-section keys."""
  return train_errors(config) + frame_mask_errors(config) + residual_errors(config)
