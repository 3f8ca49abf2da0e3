"""The autoencoder's training objective: reconstruction + KL to the standard normal prior.

Per example, with N the number of input values (T * H * W * C):

    loss = rec + autoencoder.kl_weight * KL(q(z | x) || N(0, I)) / N
    rec  = mean |x - decode(z)|   ('l1', Stable Diffusion's)  or  mean (x - decode(z))^2 ('l2')

with z drawn from the posterior (`autoencoder.sample_posterior`, the default) or its mean. Both
terms are per input value, so `kl_weight` is Stable Diffusion's KL weight (1e-6 there, on a
loss summed over pixels) unchanged. Joint image-video batches (`data.images_per_video` > 0):
the extra images go through the same network as one-frame clips (a 3-D causal VAE compresses a
first frame in space only, so an image is its own first frame), and the loss is the mean over
all rows. The metrics are the batch means of `rec`, `kl` (per input value) and `psnr` (dB, for
videos in [-1, 1]: 10 log10(4 / MSE)).

Adversarial training (`autoencoder.adversarial_weight` w > 0, with `model.discriminator` set):
from step `autoencoder.adversarial_start` on, the autoencoder's loss gains w * the hinge
generator loss (- mean D(decode(z))) and the 3-D patch discriminator (discriminator.py) trains
on the hinge loss mean relu(1 - D(x)) + mean relu(1 + D(decode(z))) plus
`autoencoder.r1_weight` / 2 * |grad_x mean D(x)|^2 on the real clips (R1). Before that step
both adversarial terms are zero (the warm-up: the reconstruction is learned first, as
taming-transformers' `disc_start`). Both players take their gradients from one backward pass:
each sees the other through `stop_gradient`, and the discriminator's terms enter the returned
loss as (d - stop_gradient(d)), which adds their gradient and nothing to its value, so `loss`
stays the autoencoder's own loss. The metrics add `g_adv`, `d_loss`, `r1`, and `d_real` /
`d_fake` (the mean logits), all computed also during the warm-up.

No perceptual (LPIPS) term: LPIPS needs ImageNet VGG-16 weights, which no package we may
install ships (torchvision downloads them at run time), and nothing here downloads weights.
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from vdm_jax.models.vae import discriminator as disc_lib
from vdm_jax.models.vae.network import kl_to_standard_normal
from vdm_jax.models.vae.spec import VAESpec

RECONSTRUCTION = ("l1", "l2")
IMAGE_SALT = 0x696d6773   # fold_in salt of the extra images' draws


def settings(config) -> dict:
  """The `autoencoder` section with its defaults."""
  a = config.get("autoencoder", None) or {}
  return dict(reconstruction=a.get("reconstruction", "l1"),
              kl_weight=float(a.get("kl_weight", 1e-6)),
              sample_posterior=bool(a.get("sample_posterior", True)),
              adversarial_weight=float(a.get("adversarial_weight", 0.0)),
              adversarial_start=int(a.get("adversarial_start", 0)),
              r1_weight=float(a.get("r1_weight", 0.0)))


def section_errors(config) -> list[str]:
  """The problems of the `autoencoder` section of an autoencoder's config (empty when valid)."""
  a = config.get("autoencoder", None) or {}
  known = ("reconstruction", "kl_weight", "sample_posterior", "adversarial_weight",
           "adversarial_start", "r1_weight")
  out = [f"autoencoder.{k} is not a key of the autoencoder section (known: {', '.join(known)})"
         for k in sorted(set(a.keys()) - set(known))]
  s = settings(config)
  if s["reconstruction"] not in RECONSTRUCTION:
    out.append(f"autoencoder.reconstruction={s['reconstruction']!r} is not one of "
               f"{RECONSTRUCTION}")
  for key in ("kl_weight", "adversarial_weight", "adversarial_start", "r1_weight"):
    if not s[key] >= 0:
      out.append(f"autoencoder.{key}={s[key]} must be >= 0")
  has_disc = bool(tuple(config.model.get("discriminator", ()) or ()))
  if s["adversarial_weight"] > 0 and not has_disc:
    out.append("autoencoder.adversarial_weight > 0 needs a discriminator: set "
               "model.discriminator to its widths, e.g. (32, 64, 128)")
  if has_disc and not s["adversarial_weight"] > 0:
    out.append("model.discriminator is set but autoencoder.adversarial_weight is 0: the "
               "discriminator would never train; set the weight (e.g. 0.1) or drop it")
  d = config.get("data", {})
  crop = (int(d.get("crop_frames", 0) or config.frames), int(d.get("crop_height", 0) or
          config.height), int(d.get("crop_width", 0) or config.width))
  if crop != (config.frames, config.height, config.width):
    try:
      spec = VAESpec.from_config(config.model)
    except ValueError:
      return out                      # the model section's own errors are reported
    out += [f"the training window data.crop_* {crop}: {e}"
            for e in spec.geometry_errors(frames=crop[0], height=crop[1], width=crop[2])]
  return out


def psnr(mse):
  """PSNR in dB of videos in [-1, 1] (peak-to-peak 2) from their mean squared error."""
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def make_loss_fn(config, model) -> Callable[[Any, Sequence[jax.Array], jax.Array], tuple]:
  """loss(params, groups, key) -> (loss, aux) of the autoencoder `model`: `groups` holds the
  batch's videos [B, T, H, W, C] in [-1, 1], then, in joint training, its extra images
  [B * K, 1, H, W, C] (vdm_jax.train.objective splits the batch). aux: 'loss_per_example'
  [rows], 'metrics' {rec, kl, psnr}, and 'row_is_image' [rows] when there are images."""
  s = settings(config)
  errors = section_errors(config)
  if errors:
    raise ValueError(errors[0])
  l1 = s["reconstruction"] == "l1"
  adv_w, r1_w = s["adversarial_weight"], s["r1_weight"]

  def discriminate(params, v):
    return model.apply({"params": params}, v, method="discriminate")

  def group(params, x, key, adv_on):
    sample_key, dropout_key = jax.random.split(key)
    x = x.astype(jnp.float32)
    recon, mean, logvar = model.apply(
        {"params": params}, x, train=True, sample_posterior=s["sample_posterior"],
        rngs={"sample": sample_key, "dropout": dropout_key})
    err = recon - x
    axes = tuple(range(1, x.ndim))
    n = float(x[0].size)
    rec = jnp.mean(jnp.abs(err) if l1 else jnp.square(err), axis=axes)        # [B]
    kl = kl_to_standard_normal(mean, logvar) / n                              # [B]
    mse = jnp.mean(jnp.square(err), axis=axes)
    loss = rec + s["kl_weight"] * kl
    if adv_w <= 0:
      return loss, rec, kl, mse, {}
    frozen_d = dict(params, discriminator=jax.lax.stop_gradient(params["discriminator"]))
    g_adv = disc_lib.hinge_g_loss(discriminate(frozen_d, recon))               # [B]
    logits_real = discriminate(params, x)
    logits_fake = discriminate(params, jax.lax.stop_gradient(recon))
    d_loss = disc_lib.hinge_d_loss(logits_real, logits_fake)                  # [B]
    r1 = (disc_lib.r1_penalty(lambda v: discriminate(params, v), x) if r1_w > 0
          else jnp.zeros_like(d_loss))
    d_total = adv_on * (d_loss + 0.5 * r1_w * r1)
    loss = loss + adv_on * adv_w * g_adv + (d_total - jax.lax.stop_gradient(d_total))
    adv = dict(g_adv=g_adv, d_loss=d_loss, r1=r1,
               d_real=jnp.mean(logits_real, axis=tuple(range(1, logits_real.ndim))),
               d_fake=jnp.mean(logits_fake, axis=tuple(range(1, logits_fake.ndim))))
    return loss, rec, kl, mse, adv

  def loss_fn(params, groups, key, step=0):
    adv_on = (jnp.asarray(step) >= s["adversarial_start"]).astype(jnp.float32)
    parts = [group(params, x, key if i == 0 else jax.random.fold_in(key, IMAGE_SALT * i),
                   adv_on)
             for i, x in enumerate(groups)]
    per_ex, rec, kl, mse = (jnp.concatenate(p) for p in list(zip(*parts))[:4])
    metrics = {"rec": jnp.mean(rec), "kl": jnp.mean(kl), "psnr": jnp.mean(psnr(mse))}
    for name in parts[0][4]:
      metrics[name] = jnp.mean(jnp.concatenate([p[4][name] for p in parts]))
    aux = {"loss_per_example": per_ex, "metrics": metrics}
    if len(parts) > 1:
      aux["row_is_image"] = jnp.arange(per_ex.shape[0]) >= parts[0][0].shape[0]
    return jnp.mean(per_ex), aux

  loss_fn.takes_step = True
  return loss_fn


def init_fn(model, x) -> Callable:
  """key -> the autoencoder's params, traced on `x` (a [B, T, H, W, C] array or its shape)."""
  def init(key):
    params_key, sample_key = jax.random.split(key)
    return model.init({"params": params_key, "sample": sample_key},
                      jnp.zeros(x.shape, jnp.float32))["params"]
  return init
