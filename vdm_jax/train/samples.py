"""Periodic samples during training: the EMA parameters, the stage's sampler with the config's
`sample` section (`stage_sampler.py`, shared with vdm_jax.sample), the text encoder on
`sample.prompts`, written as GIF + MP4 under `workdir/samples/step_XXXXXX/` with a
`prompts.txt` (process 0 writes; all processes sample). A latent stage's samples are decoded by
its autoencoder (`latent_codec.load_for_stage`) before they are written."""
import os
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from vdm_jax import diffusion
from vdm_jax import sharding as sharding_lib
from vdm_jax.data import latents
from vdm_jax.media import writer
from vdm_jax.models import conditioning
from vdm_jax.models import registry
from vdm_jax.text import tokenization
from vdm_jax.train import latent_codec
from vdm_jax.train import objective
from vdm_jax.train import stage_sampler


def sample_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, "samples", f"step_{step:06d}")


class PeriodicSampler:
  """Draws one video per prompt from the EMA parameters and writes them.

  For super-resolution stages the low-resolution inputs (and their text) come from the first
  rows of a training batch, since prompts alone do not determine them.
  """

  def __init__(self, config, model, *, workdir: str, mesh, param_shardings: Any,
               text_encoder: Optional[Any]):
    self.config, self.workdir = config, workdir
    self.model = model
    self.mesh = mesh
    s = config.sample
    self.prompts = list(s.prompts)
    if not self.prompts:
      raise ValueError("train.sample_every > 0 needs at least one sample.prompts entry.")
    self.is_sr = config.model.get("lowres_conditioning", "none") != "none"
    # Frame-mask (interpolation) stages sample from training rows too: their known frames.
    self.uses_frame_masks = registry.family(config.model).takes_frame_masks
    self.is_sr = self.is_sr or self.uses_frame_masks
    self.uses_text = registry.family(config.model).needs_text
    if self.uses_text and text_encoder is None and not self.is_sr:
      raise ValueError("Sampling a text-conditioned model needs a text encoder (text.encoder).")
    self._text = None
    if self.uses_text and not self.is_sr:   # a bad sample.prompts entry fails at the start
      self._text = text_encoder.encode(
          tokenization.check_prompts(self.prompts, allow_empty=False))
    self.schedule = diffusion.schedule_from_config(config.diffusion, resolution=config.height)
    self.settings = stage_sampler.sample_settings(config)
    self.codec = (latent_codec.load_for_stage(config) if latents.is_latent_config(config)
                  else None)
    replicated = NamedSharding(mesh, PartitionSpec())
    self._sample = jax.jit(self._sample_fn, in_shardings=(param_shardings, replicated, replicated),
                           out_shardings=replicated)

  def _sample_fn(self, params, step, cond):
    """The stage's sampler on `cond` (n rows) with key fold_in(key(seed + 1), step), guided
    against the null text; an SR stage's lowres_video bounds and completes its residual."""
    key = jax.random.fold_in(jax.random.key(int(self.config.seed) + 1), step)
    n = next(iter(jax.tree.leaves(cond))).shape[0] if cond else len(self.prompts)
    has_uncond = self.uses_text and self.settings["guidance_weight"] != 0.0
    uncond = None
    if has_uncond:
      uncond = dict(cond)
      uncond["text_emb"] = jnp.zeros_like(cond["text_emb"])
      uncond["text_mask"] = jnp.zeros_like(cond["text_mask"])
    c = self.config
    run = stage_sampler.make_sample_fn(c, self.model, self.settings,
                                       shape=(n, c.frames, c.height, c.width, c.channels),
                                       has_uncond=has_uncond)
    return run(params, key, cond, uncond, None, lowres=cond.get("lowres_video"))

  def sample_conditioning(self, batch: Optional[dict]):
    """(cond dict of host arrays with leading dim n, the prompt lines for prompts.txt)."""
    n = len(self.prompts)
    if self.is_sr:
      if batch is None or ("lowres" not in batch and not self.uses_frame_masks):
        raise ValueError("Sampling an SR stage needs a batch with 'lowres' videos.")
      rows = {k: np.asarray(v)[:n] for k, v in batch.items()}
      if self.uses_frame_masks:   # the first pattern that keeps frames, e.g. stride:2
        patterns, _ = objective.frame_mask_settings(self.config.train)
        pattern = next((p for p in patterns if p != "none"), "none")
        known = conditioning.frame_mask_pattern(pattern, int(self.config.frames))
        rows["frame_mask"] = np.broadcast_to(known, (len(rows["video"]), known.shape[0]))
      cond = registry.family(self.config.model).model_inputs(rows)
      cond = {k: np.asarray(v) for k, v in cond.items()}
      if self.config.model.get("cond_aug_conditioning", False):
        cond["cond_aug_logsnr"] = np.full((len(rows["video"]),), self.schedule(0.0), np.float32)
      if jax.process_count() > 1:  # every process must sample the same (process 0's) rows
        cond = multihost_utils.broadcast_one_to_all(cond)
      what = f"frames {pattern} known" if self.uses_frame_masks else "SR"
      lines = [f"{what} of training row {i} (its own caption)"
               for i in range(len(rows["video"]))]
      return cond, lines
    cond = {}
    if self.uses_text:
      cond["text_emb"], cond["text_mask"] = self._text
    if self.config.model.get("fps_conditioning", False):
      cond["fps"] = np.full((n,), float(self.config.fps), np.float32)
    return cond, self.prompts

  def __call__(self, step: int, ema_params: Any, batch: Optional[dict] = None) -> list[str]:
    """Samples with the key fold_in(key(seed + 1), step) and writes the videos (process 0)."""
    cond, lines = self.sample_conditioning(batch)
    args = sharding_lib.replicate((np.int32(step), cond), self.mesh)
    with jax.set_mesh(self.mesh):
      videos = self._sample(ema_params, *args)
    videos = np.asarray(videos.addressable_data(0))  # replicated: every process has it all
    if jax.process_index() != 0:
      return []
    if self.codec is not None:   # a latent stage: its latents decoded to pixels
      videos = self.codec.decode(videos)
    return writer.write_videos(sample_dir(self.workdir, step), list(videos),
                               fps=float(self.config.fps), prompts=lines)
