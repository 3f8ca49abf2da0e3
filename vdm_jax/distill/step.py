"""The sharded distillation step: `vdm_jax.train.step.train_step` (conditioning dropout,
gradient accumulation, clipping, optax update, EMA, skip of non-finite steps) with the teacher
as a second, read-only, sharded argument.

The teacher inputs are a dict {'params': teacher parameters, 'student_steps': int32 [],
'round': int32 []}: passing the teacher as an argument (not a closure) keeps its parameters out
of the compiled program and sharded like the student's, and the traced counts let every
progressive round reuse one compiled step.
"""
import functools
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import optax

from vdm_jax import sharding as sharding_lib
from vdm_jax.train import step as step_lib
from vdm_jax.train.state import TrainState

# loss_fn(params, teacher, batch, key) -> (scalar loss, aux with 'loss_per_example' [b]).
DistillLossFn = Callable[[Any, dict, dict, jax.Array], tuple]


def teacher_inputs(params: Any, *, student_steps: int, round_index: int, mesh: Mesh) -> dict:
  """The teacher argument of the step: its parameters (already on their shardings) and the
  round's counts as replicated int32 scalars."""
  counts = sharding_lib.replicate({"student_steps": np.int32(student_steps),
                                   "round": np.int32(round_index)}, mesh)
  return {"params": params, **counts}


def teacher_shardings(param_shardings: Any, mesh: Mesh) -> dict:
  """Shardings of `teacher_inputs`: the parameters' own, the counts replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return {"params": param_shardings, "student_steps": replicated, "round": replicated}


def distill_step(state: TrainState, teacher: dict, batch: dict, *, loss_fn: DistillLossFn,
                 **train_step_kwargs) -> tuple[TrainState, dict]:
  """One optimizer step of the student on a global batch; the teacher gets no gradient.

  `train_step_kwargs` are those of `vdm_jax.train.step.train_step` (tx, lr_schedule, seed,
  ema_decay, ema_warmup, grad_accum_steps, cond_drop_prob).
  """
  def bound(params, b, key):
    return loss_fn(params, jax.lax.stop_gradient(teacher), b, key)
  return step_lib.train_step(state, batch, loss_fn=bound, **train_step_kwargs)


def make_distill_step(*, loss_fn: DistillLossFn, tx: optax.GradientTransformation,
                      lr_schedule: optax.Schedule, train_cfg, seed: int, cond_drop_prob: float,
                      mesh: Mesh, rules, state_shardings: TrainState,
                      teacher_param_shardings: Any, batch_like: dict,
                      constrain_activations: bool = False) -> step_lib.ShardedFn:
  """`distill_step` bound and jitted with explicit shardings (state donated), like
  `vdm_jax.train.step.make_train_step`: call it as step(state, teacher, batch)."""
  accum = int(train_cfg.grad_accum_steps)
  batch_size = int(next(iter(batch_like.values())).shape[0])
  dp = sharding_lib.data_parallel_size(mesh, rules)
  if batch_size % accum or (batch_size // accum) % dp:
    raise ValueError(f"train.batch_size={batch_size} with train.grad_accum_steps={accum} gives "
                     f"microbatches of {batch_size / accum:g}, which must be a whole multiple "
                     f"of the data-parallel size {dp}.")
  fn = functools.partial(
      distill_step, loss_fn=loss_fn, tx=tx, lr_schedule=lr_schedule, seed=int(seed),
      ema_decay=float(train_cfg.ema_decay), ema_warmup=bool(train_cfg.ema_warmup),
      grad_accum_steps=accum, cond_drop_prob=float(cond_drop_prob))
  replicated = NamedSharding(mesh, PartitionSpec())
  in_shardings = (state_shardings, teacher_shardings(teacher_param_shardings, mesh),
                  step_lib.batch_shardings(batch_like, mesh, rules))
  return step_lib.ShardedFn(fn, mesh=mesh, rules=rules, in_shardings=in_shardings,
                            out_shardings=(state_shardings, replicated), donate_argnums=(0,),
                            constrain_activations=constrain_activations)
