"""The optax optimizer and learning-rate schedule that `config.train` describes."""
import math

import jax
import optax

from vdm_jax import errors as errors_lib
from vdm_jax.models import family
from vdm_jax.models import registry

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("warmup_cosine", "constant")
TRAINABLE = family.TRAINABLE         # train.trainable


def optimizer_errors(train_cfg) -> list[str]:
  """What is wrong with the optimizer / schedule keys of `train` (naming the key and the fix)."""
  t, errors = train_cfg, []
  if t.optimizer not in OPTIMIZERS:
    errors.append(f"train.optimizer={t.optimizer!r} is not one of {OPTIMIZERS}")
  if t.lr_schedule not in LR_SCHEDULES:
    errors.append(f"train.lr_schedule={t.lr_schedule!r} is not one of {LR_SCHEDULES}")
  if not (isinstance(t.lr, (int, float)) and math.isfinite(t.lr) and t.lr > 0):
    errors.append(f"train.lr={t.lr} must be a positive number")
  if t.warmup_steps < 0:
    errors.append(f"train.warmup_steps={t.warmup_steps} must be >= 0")
  if t.grad_clip < 0:
    errors.append(f"train.grad_clip={t.grad_clip} must be >= 0 (0 disables)")
  if not 0.0 <= t.ema_decay < 1.0:
    errors.append(f"train.ema_decay={t.ema_decay} must be in [0, 1)")
  if t.grad_accum_steps < 1:
    errors.append(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
  if t.get("trainable", "all") not in TRAINABLE:
    errors.append(f"train.trainable={t.trainable!r} is not one of {TRAINABLE}")
  if t.optimizer == "adam" and t.weight_decay:
    errors.append("train.weight_decay needs train.optimizer='adamw' (plain adam has no "
                  "decoupled weight decay)")
  return errors


def check_train_config(train_cfg) -> None:
  """Raises ConfigError naming the key and the fix for a bad optimizer / schedule setting."""
  errors = optimizer_errors(train_cfg)
  if errors:
    raise errors_lib.ConfigError(errors[0] + ".")


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """lr(update count): linear warmup from 0 over `warmup_steps`, then cosine decay to 0 at
  `num_steps` ('warmup_cosine') or constant ('constant'; no warmup when warmup_steps=0)."""
  lr, warmup = float(train_cfg.lr), int(train_cfg.warmup_steps)
  if train_cfg.lr_schedule == "warmup_cosine":
    decay_steps = max(int(train_cfg.num_steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps, end_value=0.0)
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def _decay_mask(params):
  """Weight decay only on kernels / embeddings (ndim > 1), never on biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(train_cfg, model_cfg=None) -> optax.GradientTransformation:
  """Global-norm clipping (if grad_clip > 0) followed by adam or adamw on the lr schedule.

  With `train.trainable='temporal'` (the model section `model_cfg` is then required) only the
  model's temporal parameters are updated: the rest get zero updates, no optimizer state and no
  weight decay, and the clipping norm is over the trainable gradients only
  (`optax.multi_transform`; Make-A-Video's spatial layers frozen while motion is learned).
  """
  check_train_config(train_cfg)
  schedule = learning_rate_schedule(train_cfg)
  if train_cfg.optimizer == "adam":
    opt = optax.adam(schedule, b1=train_cfg.b1, b2=train_cfg.b2)
  else:
    opt = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                      weight_decay=train_cfg.weight_decay, mask=_decay_mask)
  if train_cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
  trainable = train_cfg.get("trainable", "all")
  if trainable == "all":
    return opt
  if model_cfg is None:
    raise errors_lib.ConfigError(f"train.trainable={trainable!r} needs the model section to "
                                 "tell which parameters train (a bug: pass model_cfg)")
  fam = registry.family(model_cfg)
  return optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()},
                               lambda params: fam.trainable_labels(params, trainable))
