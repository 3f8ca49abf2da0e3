"""The pure train step: conditioning dropout, (accumulated) gradients of the diffusion loss,
clipping + optax update, EMA, and an on-purpose skip of non-finite steps.

`train_step` is a module-level pure function; `make_train_step` binds its static arguments and
jits it with explicit shardings and a donated state. The step RNG is
fold_in(key(seed), state.step), so a restored state replays exactly.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import optax

from vdm_jax import sharding as sharding_lib
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.models import axes
from vdm_jax.train.state import TrainState, ema_decay_at, ema_update

# loss_fn(params, batch, key) -> (scalar loss, aux with 'loss_per_example' [rows] and, for a
# batch with rows beyond 'video' (joint image-video training), 'row_is_image' [rows]). A loss
# function with the attribute `takes_step` = True is called with the keyword `step` (the
# state's step counter, a traced int32 scalar) too, e.g. for an adversarial term's warm-up.
LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]

_COND_DROP_SALT = 0   # step key fold-ins: 0 for conditioning dropout, 1 + i for microbatch i


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The RNG key of train step `step`: a pure function of (seed, step)."""
  return jax.random.fold_in(jax.random.key(seed), step)


def apply_cond_dropout(batch: dict, key: jax.Array, prob: float) -> dict:
  """Replaces the text condition of a Bernoulli(prob) subset of examples by the null condition
  (zero embeddings `text_emb` [B, L, D], all-False `text_mask` [B, L]) for classifier-free
  guidance; the extra images of a joint batch (IMAGE_PREFIX keys) get their own draws.
  Batches without text are returned unchanged."""
  if prob <= 0 or "text_emb" not in batch:
    return batch
  out = dict(batch)
  for i, prefix in enumerate(("", IMAGE_PREFIX)):
    emb_key, mask_key = prefix + "text_emb", prefix + "text_mask"
    if emb_key not in batch:
      continue
    emb = batch[emb_key]
    drop = jax.random.bernoulli(jax.random.fold_in(key, i) if i else key, prob,
                                (emb.shape[0],))  # [B]
    out[emb_key] = jnp.where(drop[:, None, None], jnp.zeros_like(emb), emb)
    if mask_key in batch:
      out[mask_key] = jnp.where(drop[:, None], False, batch[mask_key])
  return out


def split_microbatches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B / num, ...], microbatch i holding examples i, i + num, i + 2 num, ...

  The interleaving keeps each device's rows on that device (B stays sharded on dim 1)."""
  def split(x):
    y = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    y = jnp.swapaxes(y, 0, 1)
    return nn.with_logical_constraint(y, (None, axes.BATCH) + (None,) * (x.ndim - 1))
  return jax.tree.map(split, batch)


def merge_microbatches(x: jax.Array) -> jax.Array:
  """Inverse of `split_microbatches` for one array: [num, b, ...] -> [num * b, ...]."""
  y = jnp.swapaxes(x, 0, 1)
  return y.reshape((y.shape[0] * y.shape[1],) + y.shape[2:])


def _row_is_image(batch: dict, aux: dict) -> jax.Array:
  """bool [rows] aligned with aux['loss_per_example']: which rows are images."""
  if "row_is_image" in aux:
    return aux["row_is_image"]
  if "is_image" in batch:
    return batch["is_image"].astype(jnp.bool_)
  return jnp.zeros(aux["loss_per_example"].shape, jnp.bool_)


def _grads(params, batch, key, loss_fn: LossFn, accum: int, step=None):
  """(loss, per-example losses [rows], which rows are images [rows], the objective's own
  metrics {name: scalar} (aux 'metrics', mean over microbatches), mean gradient) over
  `accum` microbatches."""
  if getattr(loss_fn, "takes_step", False) and step is not None:
    loss_fn = functools.partial(loss_fn, step=step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum == 1:
    (loss, aux), grads = grad_fn(params, batch, jax.random.fold_in(key, 1))
    return (loss, aux["loss_per_example"], _row_is_image(batch, aux), aux.get("metrics", {}),
            grads)

  micro = split_microbatches(batch, accum)

  def body(carry, xs):
    i, mb = xs
    (loss, aux), g = grad_fn(params, mb, jax.random.fold_in(key, 1 + i))
    g_sum, l_sum = carry
    rows = (aux["loss_per_example"], _row_is_image(mb, aux), aux.get("metrics", {}))
    return (jax.tree.map(jnp.add, g_sum, g), l_sum + loss), rows

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  (g_sum, l_sum), (per_ex, is_img, metrics) = jax.lax.scan(
      body, (zeros, jnp.zeros((), jnp.float32)), (jnp.arange(accum), micro))
  grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), g_sum, params)
  metrics = {name: jnp.mean(v) for name, v in metrics.items()}
  return (l_sum / accum, merge_microbatches(per_ex), merge_microbatches(is_img), metrics,
          grads)


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, lr_schedule: optax.Schedule, seed: int,
               ema_decay: float, ema_warmup: bool = True, grad_accum_steps: int = 1,
               cond_drop_prob: float = 0.0) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch (arrays with leading dim B).

  A NaN/Inf loss or gradient norm leaves params, EMA and optimizer state untouched; the step
  counter still advances and `nonfinite_count` / `consecutive_nonfinite` count the skip.

  Returns (new state, metrics of scalars: loss, grad_norm, lr, ema_decay, finite,
  nonfinite_count, consecutive_nonfinite, loss_video / loss_image for joint batches, and the
  objective's own metrics: aux["metrics"] of the loss function, e.g. an autoencoder's psnr).
  """
  key = step_key(seed, state.step)
  batch = apply_cond_dropout(batch, jax.random.fold_in(key, _COND_DROP_SALT), cond_drop_prob)
  loss, per_example, row_is_image, objective_metrics, grads = _grads(
      state.params, batch, key, loss_fn, grad_accum_steps, step=state.step)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  new_ema = ema_update(state.ema_params, new_params, decay)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  skipped = (~finite).astype(jnp.int32)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(new_params, state.params),
      ema_params=keep(new_ema, state.ema_params),
      opt_state=keep(new_opt_state, state.opt_state),
      nonfinite_count=state.nonfinite_count + skipped,
      consecutive_nonfinite=jnp.where(finite, 0, state.consecutive_nonfinite + 1))

  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "lr": lr_schedule(state.step - state.nonfinite_count),
      "ema_decay": decay,
      "finite": finite,
      "nonfinite_count": new_state.nonfinite_count,
      "consecutive_nonfinite": new_state.consecutive_nonfinite,
      **objective_metrics,
  }
  if "is_image" in batch or IMAGE_PREFIX + "video" in batch:
    is_img = row_is_image.astype(jnp.float32)
    n_img = jnp.sum(is_img)
    n_vid = is_img.shape[0] - n_img
    nan = jnp.float32(jnp.nan)  # NaN marks "no such rows in this batch"; logs skip it
    metrics["loss_image"] = jnp.where(
        n_img > 0, jnp.sum(per_example * is_img) / jnp.maximum(n_img, 1.0), nan)
    metrics["loss_video"] = jnp.where(
        n_vid > 0, jnp.sum(per_example * (1 - is_img)) / jnp.maximum(n_vid, 1.0), nan)
  return new_state, metrics


class ShardedFn:
  """A jitted function traced and run under its mesh (and, optionally, its logical rules).

  With `constrain_activations`, the model's `nn.with_logical_constraint` calls map through
  `rules` (activation layouts pinned); without, they are no-ops and XLA propagates the layouts
  from the sharded parameters and batch. Either way the in/out shardings are explicit.
  """

  def __init__(self, fn, *, mesh: Mesh, rules, in_shardings, out_shardings,
               donate_argnums=(), constrain_activations: bool = True):
    self.mesh, self.rules = mesh, rules
    self.constrain_activations = constrain_activations
    self._jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                           donate_argnums=donate_argnums)

  def _context(self):
    return nn.logical_axis_rules(self.rules if self.constrain_activations else ())

  def __call__(self, *args):
    with jax.set_mesh(self.mesh), self._context():
      return self._jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh), self._context():
      return self._jitted.lower(*args)


def batch_shardings(batch_like: dict, mesh: Mesh, rules) -> dict:
  """A NamedSharding per batch entry: leading (batch) dim over the batch mesh axes."""
  return {k: sharding_lib.batch_sharding(mesh, rules, len(v.shape))
          for k, v in batch_like.items()}


def check_microbatches(batch_like: dict, train_cfg, mesh: Mesh, rules) -> int:
  """Returns train.grad_accum_steps after checking that the batch splits into microbatches
  that are whole multiples of the data-parallel size (a ValueError says what to change)."""
  accum = int(train_cfg.grad_accum_steps)
  dp = sharding_lib.data_parallel_size(mesh, rules)
  for key in ("video", IMAGE_PREFIX + "video"):   # the video rows, then the extra images
    if key not in batch_like:
      continue
    rows = int(batch_like[key].shape[0])
    if rows % accum or (rows // accum) % dp:
      what = ("train.batch_size" if key == "video" else
              "the extra images (train.batch_size x data.images_per_video)")
      raise ValueError(f"{what}={rows} with train.grad_accum_steps={accum} gives "
                       f"microbatches of {rows / accum:g}, which must be a whole multiple "
                       f"of the data-parallel size {dp}.")
  return accum


def step_options(train_cfg, *, seed: int, cond_drop_prob: float) -> dict:
  """The static keyword arguments of `train_step` that come from the config."""
  return dict(seed=int(seed), ema_decay=float(train_cfg.ema_decay),
              ema_warmup=bool(train_cfg.ema_warmup),
              grad_accum_steps=int(train_cfg.grad_accum_steps),
              cond_drop_prob=float(cond_drop_prob))


def host_scalars(metrics: dict) -> dict:
  """Replicated metric scalars -> Python floats (valid when arrays span several processes)."""
  return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}


def make_train_step(*, loss_fn: LossFn, tx: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, train_cfg, seed: int, cond_drop_prob: float,
                    mesh: Mesh, rules, state_shardings: TrainState,
                    batch_like: dict, constrain_activations: bool = True) -> ShardedFn:
  """`train_step` with its static arguments bound, jitted with explicit in/out shardings and
  the state donated. `batch_like` (arrays or ShapeDtypeStructs) fixes the batch keys/ranks."""
  check_microbatches(batch_like, train_cfg, mesh, rules)
  fn = functools.partial(train_step, loss_fn=loss_fn, tx=tx, lr_schedule=lr_schedule,
                         **step_options(train_cfg, seed=seed, cond_drop_prob=cond_drop_prob))
  replicated = NamedSharding(mesh, PartitionSpec())
  return ShardedFn(fn, mesh=mesh, rules=rules,
                   in_shardings=(state_shardings, batch_shardings(batch_like, mesh, rules)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,),
                   constrain_activations=constrain_activations)
