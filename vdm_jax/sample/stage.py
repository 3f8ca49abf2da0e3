"""A trained stage ready to sample: `Stage`, what kind of stage a config is, and loading one.

    stage = load_stage(config, workdir)                 # EMA parameters of the latest step
    stage = load_stage_from_workdir(round_dir)          # with the config the directory saved

`load_stage` restores only what sampling needs (the EMA parameters, through
`vdm_jax.train.checkpoint.restore_ema_params`) onto the config's mesh (one GPU for evaluation
is a mesh of one device). `make_stage` builds a Stage from parameters already in place (an
exported stage, `vdm_jax.export`) the same way: the config's model module and, for a
text-conditioned model, its text encoder.

A latent stage (`data.latents`) also loads its frozen autoencoder (`Stage.codec`,
`vdm_jax.train.latent_codec.load_for_stage`): its sampler diffuses normalized latents and
decodes them at the end, so what it returns, and `video_config(config)` describes, are pixels.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from absl import logging
import ml_collections

from vdm_jax import sharding as sharding_lib
from vdm_jax import text
from vdm_jax.data import latents
from vdm_jax.models import registry
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import latent_codec


def is_interpolation_stage(config) -> bool:
  """Whether `config` is a temporal SR stage by masked frame interpolation (Make-A-Video)."""
  return config.stage == "tsr" and registry.family(config.model).takes_frame_masks


def is_sr_config(config) -> bool:
  """Whether a stage samples from the previous stage's video: SR stages conditioned on the
  low-resolution video, and masked-interpolation temporal SR stages."""
  return registry.family(config.model).takes_lowres or is_interpolation_stage(config)


def video_config(config):
  """The geometry of the videos a stage samples: `config` itself for a pixel stage; for a
  latent stage a copy whose frames, height, width and channels are its latents' decoded by
  its autoencoder (read from the autoencoder's config; nothing is loaded)."""
  if not latents.is_latent_config(config):
    return config
  out = config.copy_and_resolve_references()
  out.frames, out.height, out.width, out.channels = latent_codec.decoded_shape(config)
  return out


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
  # A latent stage's frozen autoencoder (`latent_codec.LatentCodec`): decodes the samples.
  codec: Optional[Any] = None
  # Jitted samplers by (settings, shape, guided): repeated calls of one shape compile once.
  jit_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def family(self):
    """The model family's interface (`vdm_jax.models.registry.family`)."""
    return registry.family(self.config.model)

  @property
  def uses_text(self) -> bool:
    return self.family.needs_text

  @property
  def is_sr(self) -> bool:
    return is_sr_config(self.config)

  @property
  def is_latent(self) -> bool:
    return self.codec is not None

  @property
  def uses_frame_masks(self) -> bool:
    return self.family.takes_frame_masks

  @property
  def takes_guidance_weight(self) -> bool:
    """A guided-distillation student: w is a model input and one evaluation per step replaces
    classifier-free guidance's two."""
    return self.family.takes_guidance_weight


def make_stage(config, params: Any, param_shardings: Any, *, step: int, mesh: Any,
               text_encoder: Optional[Any] = None, codec: Optional[Any] = None) -> Stage:
  """A Stage of `config`'s model with `params` (placed by `param_shardings` on `mesh`); a
  text-conditioned model without `text_encoder` loads the one `config.text` names, a latent
  stage without `codec` the autoencoder `latent.autoencoder` names."""
  fam = registry.family(config.model)
  fam.require_denoiser("sampling")
  if text_encoder is None and fam.needs_text:
    text_encoder = text.load_text_encoder(config.text)
  if codec is None and latents.is_latent_config(config):
    codec = latent_codec.load_for_stage(config)
  return Stage(config=config, model=fam.module(), params=params, step=int(step), mesh=mesh,
               param_shardings=param_shardings, text_encoder=text_encoder, codec=codec)


def load_stage(config, workdir: str, *, step: Optional[int] = None,
               text_encoder: Optional[Any] = None,
               devices: Optional[Sequence[Any]] = None) -> Stage:
  """Restores the EMA parameters of `workdir`'s checkpoint `step` (default: the latest) onto
  the config's mesh over `devices` (default: all).

  Raises FileNotFoundError when the workdir has no checkpoint, and the checkpointer's
  CheckpointError when it holds another model configuration.
  """
  mesh = sharding_lib.create_mesh(config.sharding, devices)
  params, shardings, step = ckpt_lib.restore_ema_params(config, workdir, step=step, mesh=mesh)
  stage = make_stage(config, params, shardings, step=step, mesh=mesh, text_encoder=text_encoder)
  logging.info("Loaded %s stage from %s (step %d).", config.stage, workdir, step)
  return stage


def load_stage_from_workdir(workdir: str, *, step: Optional[int] = None,
                            text_encoder: Optional[Any] = None,
                            devices: Optional[Sequence[Any]] = None) -> Stage:
  """`load_stage` with the config that `workdir` saved (its config.json): for a training
  workdir or a distillation round directory (`<distill workdir>/rounds/<round>`, whose config
  says how its student samples: model.guidance_weight_conditioning, sample.num_steps)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: pass a training workdir or a "
                            "distillation round directory.")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  return load_stage(config, workdir, step=step, text_encoder=text_encoder, devices=devices)
