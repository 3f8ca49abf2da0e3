"""A frozen autoencoder for latent diffusion: clips to latents once, samples back to pixels.

    codec = load_autoencoder("runs/vae3d")          # the newest EMA parameters of a workdir
    means = codec.encode_means(videos)              # [N, T', H', W', C'] posterior means
    codec = load_for_stage(config)                  # a latent stage's, with its statistics
    videos = codec.decode(samples)                  # normalized latents -> [N, T, H, W, 3]

An autoencoder (`model.family='vae'`) is named by its training workdir (its EMA parameters,
restored with the config it saved) or by an exported stage directory (`vdm_jax.weights`:
params.safetensors + config.json, verified against the manifest of the cascade above it). Its
per-channel latent statistics live beside it in latent_stats.json (`vdm_jax.data.latents`),
written by `--mode=build_latents` with the checkpoint step and the sha256 of the parameters
they were computed with: a latent stage loads its autoencoder at that step (a workdir may have
trained on since) and refuses parameters with another digest. Decoding un-normalizes
(`LatentStats.denormalize`), decodes the whole clip or `latent.decode_chunk` latents at a time
(`vdm_jax.models.vae.chunked.decode_chunked`: exact, bounded memory) and clips to [-1, 1].
The parameters sit on one device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm_jax import errors
from vdm_jax import sharding as sharding_lib
from vdm_jax import weights
from vdm_jax.data import latents as latents_lib
from vdm_jax.models import registry
from vdm_jax.models.vae import chunked
from vdm_jax.models.vae.network import AutoencoderKL
from vdm_jax.train import checkpoint as ckpt_lib


def params_sha256(params: Any) -> str:
  """The sha256 of a parameter tree's float32 values in sorted path order (its identity)."""
  h = hashlib.sha256()
  for key, value in weights.flatten_params(params).items():
    h.update(key.encode("utf-8"))
    h.update(np.ascontiguousarray(value, np.float32).tobytes())
  return h.hexdigest()


def autoencoder_config(path: str):
  """The experiment config an autoencoder was trained with (no parameters are read), checked
  to be an autoencoder's."""
  if not path:
    raise errors.ConfigError("latent.autoencoder is empty: name a trained autoencoder (its "
                             "training workdir or exported stage directory).")
  if weights.is_exported_stage(path):
    config = ml_collections.ConfigDict(
        weights.read_json(os.path.join(path, weights.CONFIG), "The stage config"))
  elif os.path.isdir(path):
    config = ckpt_lib.workdir_config(path)
  else:
    raise errors.ConfigError(f"latent.autoencoder={path!r} is neither a training workdir nor "
                             "an exported stage directory.")
  fam = registry.family(config.model)
  if fam.is_denoiser:
    raise errors.ConfigError(f"latent.autoencoder={path!r} holds a denoiser (model.family="
                             f"{fam.name!r}); name an autoencoder (model.family='vae').")
  return config


def decoded_shape(config) -> tuple[int, int, int, int]:
  """(frames, height, width, channels) of the videos a latent stage `config` samples: its
  latent geometry through its autoencoder's decoder (read from the autoencoder's config)."""
  spec = registry.family(autoencoder_config(config.latent.autoencoder).model).spec
  s = spec.spatial_factor
  return (spec.frames_for_latents(int(config.frames)), int(config.height) * s,
          int(config.width) * s, int(spec.image_channels))


@dataclasses.dataclass
class LatentCodec:
  """A loaded autoencoder (see the module docstring)."""
  config: Any                        # the autoencoder's own experiment config
  model: AutoencoderKL
  params: Any
  step: int
  path: str
  stats: Optional[latents_lib.LatentStats] = None
  decode_chunk: int = 0              # latents per decode call; 0 = the whole clip
  digest: str = ""
  jit_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def spec(self):
    return self.model.spec

  def identity(self) -> dict:
    """What a latent dataset records of the autoencoder that made it."""
    return {"path": self.path, "step": int(self.step), "params_sha256": self.digest,
            "model": ckpt_lib.config_to_dict(self.config.model)}

  def video_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the clips it encodes: its config's geometry."""
    c = self.config
    return (int(c.frames), int(c.height), int(c.width), int(self.spec.image_channels))

  def _jitted(self, name, fn):
    if name not in self.jit_cache:
      self.jit_cache[name] = jax.jit(fn)
    return self.jit_cache[name]

  def encode_means(self, videos: np.ndarray) -> np.ndarray:
    """Posterior means float32 [B, T', H', W', C'] of videos [B, T, H, W, C] in [-1, 1]."""
    run = self._jitted("encode", lambda p, x: self.model.apply(
        {"params": p}, x, method=AutoencoderKL.encode)[0])
    return np.asarray(run(self.params, jnp.asarray(videos, jnp.float32)))

  def decode(self, latents: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """Videos float32 [N, T, H, W, C] in [-1, 1] of normalized latents [N, T', H', W', C']
    (a latent stage's samples), decoded `batch_size` at a time (the last batch padded)."""
    if self.stats is None:
      raise ValueError(f"The autoencoder {self.path} was loaded without latent statistics; "
                       "load it with load_for_stage.")
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 5 or latents.shape[-1] != self.spec.latent_channels:
      raise ValueError(f"latents {latents.shape} must be [N, T', H', W', "
                       f"{self.spec.latent_channels}] for the autoencoder {self.path}.")
    shift, scale = jnp.asarray(self.stats.shift), jnp.asarray(self.stats.scale)
    chunk = int(self.decode_chunk)

    def fn(params, x):
      z = x / scale - shift
      if chunk > 0:
        video = chunked.decode_chunked(self.model, params, z, chunk_latents=chunk)
      else:
        video = self.model.apply({"params": params}, z, method=AutoencoderKL.decode)
      return jnp.clip(video, -1.0, 1.0)
    run = self._jitted("decode", fn)
    n, size = len(latents), max(1, min(int(batch_size), len(latents)))
    out = []
    for start in range(0, n, size):
      part = latents[start:start + size]
      m = len(part)
      if m < size:
        part = np.concatenate([part, np.zeros((size - m,) + part.shape[1:], part.dtype)])
      out.append(np.asarray(run(self.params, jnp.asarray(part)))[:m])
    return np.concatenate(out)


def load_autoencoder(path: str, *, step: Optional[int] = None,
                     decode_chunk: int = 0) -> LatentCodec:
  """The EMA parameters of the autoencoder at `path` (checkpoint `step` of a training workdir,
  default its newest good one; an exported stage has one) on one device."""
  config = autoencoder_config(path)
  fam = registry.family(config.model)
  if weights.is_exported_stage(path):
    flat_params, saved_step, _ = weights.load_stage_params(path)
    if step is not None and int(step) != int(saved_step):
      raise errors.ConfigError(f"The exported autoencoder {path} holds step {saved_step}, not "
                               f"{step}.")
    device = jax.devices()[0]
    params = jax.tree.map(lambda x: jax.device_put(np.asarray(x, np.float32), device),
                          flat_params)
    step = int(saved_step)
  else:
    one = config.sharding.copy_and_resolve_references()
    one.mesh_shape = tuple(1 for _ in one.mesh_shape)   # the autoencoder sits on one device
    mesh = sharding_lib.create_mesh(one, jax.devices()[:1])
    params, _, step = ckpt_lib.restore_ema_params(config, path, step=step, mesh=mesh)
  return LatentCodec(config=config, model=fam.module(), params=params, step=int(step),
                     path=path, decode_chunk=int(decode_chunk), digest=params_sha256(params))


def load_for_stage(config) -> LatentCodec:
  """The autoencoder of the latent stage `config` (`latent.autoencoder`) at the checkpoint step
  its latent_stats.json records, with those statistics; ConfigError when it has none (the
  latents were not built) or its parameters are not the ones the statistics were made with."""
  path = config.latent.autoencoder
  saved = latents_lib.read_stats(path) if path and os.path.isdir(path) else None
  if saved is None:
    raise errors.ConfigError(
        f"The autoencoder {path!r} has no {latents_lib.STATS_FILE}: build the latents first "
        "(python -m vdm_jax.main --mode=build_latents --config=<this config>), which computes "
        "the per-channel statistics and stores them with the autoencoder.")
  codec = load_autoencoder(path, step=int(saved["step"]),
                           decode_chunk=int(config.latent.get("decode_chunk", 0)))
  if saved.get("params_sha256") and saved["params_sha256"] != codec.digest:
    raise errors.ConfigError(
        f"The parameters of {path} at step {codec.step} are not the ones its "
        f"{latents_lib.STATS_FILE} was computed with (sha256 {codec.digest[:12]}..., recorded "
        f"{saved['params_sha256'][:12]}...); build the latents again with --mode=build_latents "
        "and retrain the latent stage.")
  stats = latents_lib.LatentStats.from_dict(saved)
  if stats.shift.shape != (codec.spec.latent_channels,):
    raise errors.ConfigError(f"{os.path.join(path, latents_lib.STATS_FILE)} has "
                             f"{stats.shift.shape[0]} channels; the autoencoder makes "
                             f"{codec.spec.latent_channels}.")
  codec.stats = stats
  if int(config.channels) != codec.spec.latent_channels:
    raise errors.ConfigError(f"channels={config.channels}, but the autoencoder {path} makes "
                             f"{codec.spec.latent_channels} latent channels.")
  return codec
