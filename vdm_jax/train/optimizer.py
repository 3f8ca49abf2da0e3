"""The optax optimizer and learning-rate schedule that `config.train` describes."""
import jax
import optax

from vdm_jax import errors as errors_lib

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("warmup_cosine", "constant")


def check_train_config(train_cfg) -> None:
  """Raises ValueError naming the key and the fix for a bad optimizer / schedule setting."""
  if train_cfg.optimizer not in OPTIMIZERS:
    raise errors_lib.ConfigError(
        f"train.optimizer={train_cfg.optimizer!r} is not one of {OPTIMIZERS}.")
  if train_cfg.lr_schedule not in LR_SCHEDULES:
    raise errors_lib.ConfigError(f"train.lr_schedule={train_cfg.lr_schedule!r} is not one of "
                                 f"{LR_SCHEDULES}.")
  if not train_cfg.lr > 0:
    raise errors_lib.ConfigError(f"train.lr={train_cfg.lr} must be positive.")
  if train_cfg.warmup_steps < 0:
    raise errors_lib.ConfigError(f"train.warmup_steps={train_cfg.warmup_steps} must be >= 0.")
  if train_cfg.grad_clip < 0:
    raise errors_lib.ConfigError(
        f"train.grad_clip={train_cfg.grad_clip} must be >= 0 (0 disables).")
  if not 0.0 <= train_cfg.ema_decay < 1.0:
    raise errors_lib.ConfigError(f"train.ema_decay={train_cfg.ema_decay} must be in [0, 1).")
  if train_cfg.grad_accum_steps < 1:
    raise errors_lib.ConfigError(
        f"train.grad_accum_steps={train_cfg.grad_accum_steps} must be >= 1.")
  if train_cfg.optimizer == "adam" and train_cfg.weight_decay:
    raise errors_lib.ConfigError(
        "train.weight_decay needs train.optimizer='adamw' (plain adam has no "
                     "decoupled weight decay).")


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


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """Global-norm clipping (if grad_clip > 0) followed by adam or adamw on the lr schedule."""
  check_train_config(train_cfg)
  schedule = learning_rate_schedule(train_cfg)
  if train_cfg.optimizer == "adam":
    opt = optax.adam(schedule, b1=train_cfg.b1, b2=train_cfg.b2)
  else:
    opt = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                      weight_decay=train_cfg.weight_decay, mask=_decay_mask)
  if train_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
  return opt
