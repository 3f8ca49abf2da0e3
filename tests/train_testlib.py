"""Shared pieces of the train tests: a tiny stand-in Linen denoiser with logical axes and a
synthetic batch. (The loop and resume tests use the real U-Net; these test the step math.)"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import axes


class TinyDenoiser(nn.Module):
  """x [B, T, H, W, C], logsnr [B] -> [B, T, H, W, C]; per-pixel MLP with a text bias."""
  hidden: int = 16
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, logsnr, *, text_emb=None, text_mask=None, **unused):
    dense = lambda f, names, name: nn.Dense(
        f, name=name, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)))
    h = dense(self.hidden, (axes.EMBED, axes.MLP), "inp")(x)
    t = jnp.tanh(logsnr / 10.0)[:, None, None, None, None]
    h = nn.gelu(h + t)
    if text_emb is not None:
      pooled = jnp.sum(text_emb * text_mask[..., None], axis=1)  # [B, D]
      h = h + dense(self.hidden, (axes.EMBED, axes.MLP), "txt")(pooled)[:, None, None, None]
    h = nn.with_logical_constraint(h, (axes.BATCH, None, None, None, axes.CHANNELS))
    h = nn.gelu(dense(self.hidden, (axes.EMBED, axes.MLP), "mid")(h))
    return dense(x.shape[-1], (axes.EMBED, axes.MLP), "out")(h).astype(jnp.float32)


def tiny_batch(batch=8, frames=2, size=4, text_len=3, text_dim=8, seed=0, images=True):
  """A synthetic numpy batch with the pipeline's keys."""
  rng = np.random.default_rng(seed)
  out = {
      "video": rng.uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32),
      "fps": np.full((batch,), 8.0, np.float32),
      "text_emb": rng.normal(size=(batch, text_len, text_dim)).astype(np.float32),
      "text_mask": np.ones((batch, text_len), bool),
  }
  if images:
    out["is_image"] = (np.arange(batch) % 4 == 3)
  return out


def tiny_loss_fn(model):
  """A diffusion LossFn for the stand-in model (v-prediction, cosine schedule)."""
  from vdm_jax.diffusion import losses, schedules
  sched = schedules.LogSNRSchedule()

  def loss_fn(params, batch, key):
    def model_fn(z, logsnr, cond):
      return model.apply({"params": params}, z, logsnr, **cond)
    cond = {"text_emb": batch["text_emb"], "text_mask": batch["text_mask"]}
    return losses.diffusion_loss(model_fn=model_fn, x=batch["video"], key=key, cond=cond,
                                 schedule=sched, prediction="v", weighting="v_mse")
  return loss_fn


def init_params_fn(model, batch):
  """key -> boxed params of `model` for inputs shaped like `batch`."""
  def init(key):
    b = batch["video"].shape[0]
    return model.init(key, jnp.zeros(batch["video"].shape), jnp.zeros((b,)),
                      text_emb=jnp.zeros(batch["text_emb"].shape),
                      text_mask=jnp.ones(batch["text_mask"].shape, bool))["params"]
  return init
