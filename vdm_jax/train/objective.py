"""The training objective of a SpaceTimeUNet stage: batch -> U-Net inputs -> diffusion loss.

`model_inputs` maps a pipeline batch onto exactly the keyword inputs the model config uses
(the U-Net rejects inputs it would ignore); `make_loss_fn` closes over the model and the
diffusion settings and returns a `LossFn` for `vdm_jax.train.step.train_step`.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vdm_jax import diffusion


def _flag(model_cfg, key: str) -> bool:
  return bool(model_cfg.get(key, False))


def needs_text(model_cfg) -> bool:
  """Whether the model reads text embeddings (cross-attention or pooled conditioning)."""
  return _flag(model_cfg, "text_cross_attention") or _flag(model_cfg, "text_pooled_conditioning")


def model_inputs(model_cfg, batch: dict) -> dict:
  """The U-Net keyword inputs from a batch: text_emb/text_mask [B, L(, D)], fps [B],
  is_image [B], lowres_video [B, T', H', W', C] as the model config asks for them."""
  kw = {}
  if needs_text(model_cfg):
    kw["text_emb"] = batch["text_emb"]
    kw["text_mask"] = batch["text_mask"].astype(jnp.bool_)
  if _flag(model_cfg, "fps_conditioning"):
    kw["fps"] = batch["fps"].astype(jnp.float32)
  if "is_image" in batch:
    kw["is_image"] = batch["is_image"].astype(jnp.bool_)
  if model_cfg.get("lowres_conditioning", "none") != "none":
    if "lowres" not in batch:
      raise ValueError("model.lowres_conditioning is set but the batch has no 'lowres' video; "
                       "train an SR stage on a pipeline that yields it (data section).")
    kw["lowres_video"] = batch["lowres"]
  return kw


def augment_lowres(lowres: jax.Array, key: jax.Array, *, schedule, max_t: float):
  """Conditioning augmentation (Imagen Video): noises the low-resolution video to a random
  level t_aug ~ U[0, max_t] of the diffusion schedule. Returns (noisy lowres, logsnr_aug [B])."""
  t_key, e_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (lowres.shape[0],), jnp.float32, 0.0, max_t)
  logsnr = schedule(t)
  eps = jax.random.normal(e_key, lowres.shape, jnp.float32)
  noisy = diffusion.q_sample(x=lowres.astype(jnp.float32), eps=eps, logsnr=logsnr)
  return noisy, logsnr


def make_loss_fn(config, model) -> Callable[[Any, dict, jax.Array], tuple]:
  """LossFn(params, batch, key) -> (loss, aux) of `model` (a SpaceTimeUNet) on a batch with
  'video' [B, T, H, W, C] in [-1, 1] and the conditioning the model config asks for."""
  m, d = config.model, config.diffusion
  schedule = diffusion.schedule_from_config(d, resolution=config.height)
  cond_aug = _flag(m, "cond_aug_conditioning")
  max_aug_t = float(config.train.get("cond_aug_max_t", 1.0))

  def loss_fn(params, batch, key):
    loss_key, dropout_key, aug_key = jax.random.split(key, 3)
    cond = model_inputs(m, batch)
    if cond_aug and "lowres_video" in cond:
      cond["lowres_video"], cond["cond_aug_logsnr"] = augment_lowres(
          cond["lowres_video"], aug_key, schedule=schedule, max_t=max_aug_t)

    def model_fn(z, logsnr, c):
      return model.apply({"params": params}, z, logsnr, **c, train=True,
                         rngs={"dropout": dropout_key})

    return diffusion.diffusion_loss(
        model_fn=model_fn, x=batch["video"].astype(jnp.float32), key=loss_key, cond=cond,
        schedule=schedule, prediction=d.prediction, weighting=d.loss_weighting,
        num_discrete_steps=int(d.num_train_timesteps))

  return loss_fn


def init_params_fn(config, model, *, batch_like: dict, batch_size: int = 1):
  """key -> boxed params of `model`, traced on a `batch_size` slice of a batch's shapes."""
  def sds(x, dtype=None):
    return jnp.zeros((batch_size,) + tuple(x.shape[1:]), dtype or x.dtype)

  def init(key):
    small = {k: sds(v) for k, v in batch_like.items()}
    kw = model_inputs(config.model, small)
    if _flag(config.model, "cond_aug_conditioning") and "lowres_video" in kw:
      kw["cond_aug_logsnr"] = jnp.zeros((batch_size,), jnp.float32)
    x = small["video"].astype(jnp.float32)
    return model.init({"params": key}, x, jnp.zeros((batch_size,), jnp.float32), **kw)["params"]

  return init
