"""The diffusion objective of a stage: batch -> model inputs -> diffusion loss.

The model's family (`vdm_jax.models.registry.family(config.model)`) maps a pipeline batch onto
exactly the keyword inputs the model takes; `make_loss_fn` closes over the model and the
diffusion settings and returns a `LossFn` for `vdm_jax.train.step.train_step`.

Masked frame interpolation (Make-A-Video; `model.frame_mask_conditioning`): the loss draws a
frame mask per example from `train.frame_mask_patterns` (stride:k = keep frames 0, k, 2k, ...;
prefix:m = keep the first m frames; none = keep nothing) with relative probabilities
`train.frame_mask_weights`; the model sees the clean known frames (noise-augmented like a
low-resolution input when `model.cond_aug_conditioning` is set) and the mask. The loss covers
ALL frames: at known positions the model learns to reproduce the given frames, so its output
agrees with the frames that sampling writes back, and the generation-only ('none') examples
keep it a plain generator. Image examples of joint training get no known frames.

Joint image-video training (VDM section 4.2; `data.images_per_video` = K > 0): the batch's
extra images (keys under `vdm_jax.data.IMAGE_PREFIX`, [B * K, 1, H, W, C]) go through the
same network as one-frame videos flagged `is_image`, so the temporal layers never mix them;
the network computes for each exactly what it computes for a frame of an image tiled over T
frames, at 1/T of the cost. VDM appends the images to each video's frames with temporal
attention masked; running them as their own one-frame group is the same computation without
the frame concatenation, and lets every image keep its own caption and noise level. The loss
is the mean over all rows, videos and images alike. With `train.pack_images` (a model that takes
packed sequences: the video transformer) each video row is followed in time by its K images,
one segment each (`segment_ids`), and the row runs as one sequence of T + K frames
(`diffusion.packed_diffusion_loss`): the same loss, one forward pass.
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.models import conditioning
from vdm_jax.models import registry


def split_joint_batch(batch: dict) -> tuple[dict, dict]:
  """(the video rows' entries, the extra images' entries without their IMAGE_PREFIX); the
  second is empty for a batch without extra images."""
  videos = {k: v for k, v in batch.items() if not k.startswith(IMAGE_PREFIX)}
  images = {k[len(IMAGE_PREFIX):]: v for k, v in batch.items() if k.startswith(IMAGE_PREFIX)}
  return videos, images


def residual_scale(config) -> float:
  """`diffusion.lowres_residual_scale` (0 = off): an SR stage then diffuses
  s * (video - upsample(lowres)) instead of the video (see `to_residual`)."""
  return float(config.diffusion.get("lowres_residual_scale", 0.0))


def lowres_upsampled(config, lowres, shape):
  """The clean low-resolution video [B, T', H', W', C] brought to `shape` [B, T, H, W, C] the
  way the model upsamples its lowres input (bilinear in space, repeat / linear in time)."""
  m = config.model
  return conditioning.upsample_lowres(
      jnp.asarray(lowres, jnp.float32), mode=m.lowres_conditioning, frames=shape[1],
      height=shape[2], width=shape[3],
      temporal_method=m.get("lowres_temporal_upsample", "repeat"))


def to_residual(config, video, lowres):
  """What an SR stage with `diffusion.lowres_residual_scale` s > 0 diffuses: the scaled
  residual s * (video - upsample(lowres)) over its clean low-resolution input (the naive
  upsampling is exact at initialization; the network learns only the missing detail).
  Identity when s = 0."""
  s = residual_scale(config)
  if s <= 0:
    return video
  return s * (video - lowres_upsampled(config, lowres, video.shape))


def from_residual(config, sample, lowres):
  """Inverts `to_residual` for a sample: upsample(lowres) + sample / s (identity when s = 0)."""
  s = residual_scale(config)
  if s <= 0:
    return sample
  return lowres_upsampled(config, lowres, sample.shape) + sample / s


def frame_mask_settings(train_cfg) -> tuple[tuple[str, ...], np.ndarray]:
  """(patterns, probabilities) of `train.frame_mask_patterns` / `train.frame_mask_weights`;
  raises ValueError naming the key when they do not fit together."""
  patterns = tuple(train_cfg.get("frame_mask_patterns", ()))
  weights = np.asarray(tuple(train_cfg.get("frame_mask_weights", ())), np.float64)
  if not patterns:
    raise ValueError("model.frame_mask_conditioning needs train.frame_mask_patterns, e.g. "
                     "('stride:2', 'stride:4', 'prefix:4', 'none')")
  if weights.shape != (len(patterns),) or not np.all(np.isfinite(weights)) or np.any(
      weights < 0) or weights.sum() <= 0:
    raise ValueError(f"train.frame_mask_weights={tuple(weights.tolist())} must give one "
                     f"non-negative weight per pattern of train.frame_mask_patterns={patterns} "
                     "(not all zero)")
  return patterns, weights / weights.sum()


def draw_frame_masks(key: jax.Array, *, patterns: Sequence[str], probs, batch_size: int,
                     frames: int) -> jax.Array:
  """One frame mask per example, bool [batch_size, frames] (True = known): pattern i of
  `patterns` (conditioning.frame_mask_pattern) with probability probs[i]."""
  table = jnp.asarray(conditioning.frame_mask_table(patterns, frames))       # [P, T]
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  index = jax.random.categorical(key, logits, shape=(batch_size,))           # [B]
  return table[index]


def augment_lowres(lowres: jax.Array, key: jax.Array, *, schedule, max_t: float):
  """Conditioning augmentation (Imagen Video): noises the low-resolution video to a random
  level t_aug ~ U[0, max_t] of the diffusion schedule. Returns (noisy lowres, logsnr_aug [B])."""
  t_key, e_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (lowres.shape[0],), jnp.float32, 0.0, max_t)
  logsnr = schedule(t)
  eps = jax.random.normal(e_key, lowres.shape, jnp.float32)
  noisy = diffusion.q_sample(x=lowres.astype(jnp.float32), eps=eps, logsnr=logsnr)
  return noisy, logsnr


_MASK_SALT = 0x6d61736b   # fold_in salt of the frame-mask draw (keeps the other draws as they are)
_IMAGE_SALT = 0x696d6773  # fold_in salt of the extra images' draws (the videos' stay as they are)


def make_loss_fn(config, model) -> Callable[[Any, dict, jax.Array], tuple]:
  """LossFn(params, batch, key) -> (loss, aux) of `model` (of the config's model family) on a
  batch with 'video' [B, T, H, W, C] in [-1, 1] and the conditioning the model config asks for:
  the diffusion loss, or the family's own objective when it has one (`ModelFamily.objective`,
  e.g. the autoencoders' reconstruction + KL)."""
  d, fam = config.diffusion, registry.family(config.model)
  if fam.family.objective is not None:   # a family with its own objective (the autoencoders)
    own = fam.family.objective(config, model)

    def family_loss(params, batch, key, step=0):
      videos, images = split_joint_batch(batch)
      groups = [videos["video"]] + ([images["video"]] if images else [])
      if getattr(own, "takes_step", False):
        return own(params, groups, key, step=step)
      return own(params, groups, key)
    family_loss.takes_step = True
    return family_loss
  schedule = diffusion.schedule_from_config(d, resolution=config.height)
  noise_fn = noise_lib.noise_fn_from_config(d)   # None: i.i.d. noise
  cond_aug = fam.takes_cond_aug
  max_aug_t = float(config.train.get("cond_aug_max_t", 1.0))
  masks = frame_mask_settings(config.train) if fam.takes_frame_masks else None
  t_sampling = diffusion.t_sampling_from_config(d)   # uniform unless the config says so
  pack_images = bool(config.train.get("pack_images", False))

  def group_loss(params, batch, key):
    """The diffusion loss of one group of rows (the videos, or the extra images)."""
    loss_key, dropout_key, aug_key = jax.random.split(key, 3)
    if masks is not None:
      b, t = batch["video"].shape[:2]
      mask = draw_frame_masks(jax.random.fold_in(key, _MASK_SALT), patterns=masks[0],
                              probs=masks[1], batch_size=b, frames=t)
      if "is_image" in batch:   # independent images: nothing to interpolate from
        mask = mask & ~batch["is_image"].astype(jnp.bool_)[:, None]
      batch = dict(batch, frame_mask=mask)
    cond = fam.model_inputs(batch)
    x = batch["video"].astype(jnp.float32)
    if "lowres" in batch:   # an SR stage diffusing its residual (lowres_residual_scale > 0)
      x = to_residual(config, x, batch["lowres"])
    if cond_aug and "lowres_video" in cond:
      cond["lowres_video"], cond["cond_aug_logsnr"] = augment_lowres(
          cond["lowres_video"], aug_key, schedule=schedule, max_t=max_aug_t)
    elif cond_aug and "frame_cond" in cond:
      noisy, cond["cond_aug_logsnr"] = augment_lowres(
          cond["frame_cond"], aug_key, schedule=schedule, max_t=max_aug_t)
      cond["frame_cond"] = jnp.where(cond["frame_mask"][:, :, None, None, None], noisy, 0.0)

    def model_fn(z, logsnr, c):
      return model.apply({"params": params}, z, logsnr, **c, train=True,
                         rngs={"dropout": dropout_key})

    return diffusion.diffusion_loss(
        model_fn=model_fn, x=x, key=loss_key, cond=cond,
        schedule=schedule, prediction=d.prediction, weighting=d.loss_weighting,
        num_discrete_steps=int(d.num_train_timesteps), noise_fn=noise_fn, **t_sampling)

  def packed_loss(params, videos, images, key):
    """Joint training with packed rows (train.pack_images): each video row followed in time by
    its K extra images, one segment each, in one forward pass."""
    loss_key, dropout_key = jax.random.split(key)
    b, t = videos["video"].shape[:2]
    k = images["video"].shape[0] // b
    per_row = lambda a: a.reshape((b, k) + a.shape[1:])               # [B * K, ...] -> [B, K, ...]
    x = jnp.concatenate([videos["video"].astype(jnp.float32),
                         per_row(images["video"].astype(jnp.float32))[:, :, 0]], axis=1)
    seg = jnp.broadcast_to(jnp.concatenate([jnp.zeros((t,), jnp.int32),
                                            jnp.arange(1, k + 1, dtype=jnp.int32)]), (b, t + k))
    cond = {"segment_ids": seg}
    if fam.needs_text:
      cond["text_emb"] = jnp.concatenate([videos["text_emb"][:, None],
                                          per_row(images["text_emb"])], axis=1)
      cond["text_mask"] = jnp.concatenate([videos["text_mask"][:, None],
                                           per_row(images["text_mask"])], axis=1).astype(bool)
    if "fps" in fam.inputs:
      cond["fps"] = jnp.concatenate([videos["fps"][:, None], per_row(images["fps"])],
                                    axis=1).astype(jnp.float32)

    def model_fn(z, logsnr, c):
      return model.apply({"params": params}, z, logsnr, **c, train=True,
                         rngs={"dropout": dropout_key})

    loss, aux = diffusion.packed_diffusion_loss(
        model_fn=model_fn, x=x, segment_ids=seg, num_segments=k + 1, key=loss_key, cond=cond,
        schedule=schedule, prediction=d.prediction, weighting=d.loss_weighting,
        num_discrete_steps=int(d.num_train_timesteps), noise_fn=noise_fn, **t_sampling)
    aux = {name: value for name, value in aux.items() if name != "valid"}
    aux["row_is_image"] = jnp.broadcast_to(jnp.arange(k + 1) > 0, (b, k + 1)).reshape(-1)
    return loss, aux

  def loss_fn(params, batch, key):
    videos, images = split_joint_batch(batch)
    if images and pack_images:
      return packed_loss(params, videos, images, key)
    loss, aux = group_loss(params, videos, key)
    if not images:
      return loss, aux
    img_loss, img_aux = group_loss(params, images, jax.random.fold_in(key, _IMAGE_SALT))
    n_vid, n_img = videos["video"].shape[0], images["video"].shape[0]
    aux = {k: jnp.concatenate([aux[k], img_aux[k]]) for k in aux}
    aux["row_is_image"] = jnp.concatenate([
        videos["is_image"].astype(jnp.bool_) if "is_image" in videos
        else jnp.zeros((n_vid,), jnp.bool_), jnp.ones((n_img,), jnp.bool_)])
    return (loss * n_vid + img_loss * n_img) / (n_vid + n_img), aux

  return loss_fn
