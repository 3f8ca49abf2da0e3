"""The train state (fp32 master parameters, their EMA, optimizer state, counters), the EMA rule,
and sharded creation of the state on a mesh."""
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import optax

from vdm_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; a pytree of arrays.

  Attributes:
    step: int32 [], train steps run so far (applied or skipped); the step RNG is
      fold_in(key(seed), step), so the state and the seed fix the next step exactly.
    params: parameter tree (param_dtype, float32 master weights).
    ema_params: exponential moving average of `params`, same tree and shardings.
    opt_state: optax state (its update count counts applied updates only).
    nonfinite_count: int32 [], steps skipped because the loss or a gradient was NaN/Inf.
    consecutive_nonfinite: int32 [], how many of the latest steps in a row were skipped.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_count: jax.Array
  consecutive_nonfinite: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 whose EMA starts at `params`."""
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), nonfinite_count=zero,
                    consecutive_nonfinite=zero)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
  """The EMA decay used at update `step` (0-based): min(decay, (1 + t) / (10 + t)) with warmup.

  The warmup keeps the early average from being dominated by the random initialization.
  """
  t = jnp.asarray(step, jnp.float32)
  if not warmup:
    return jnp.full_like(t, decay)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf, in the EMA's dtype.

  Written ema + (1 - decay) * (params - ema), so that the EMA of a parameter that never
  changes (a frozen layer) stays exactly equal to it."""
  def upd(e, p):
    e32 = e.astype(jnp.float32)
    return (e32 + (1.0 - decay) * (p.astype(jnp.float32) - e32)).astype(e.dtype)
  return jax.tree.map(upd, ema_params, params)


def _path_key(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def match_state_shardings(abstract_state: TrainState, param_shardings: Any,
                          mesh: Mesh) -> TrainState:
  """Shardings for every state leaf: a leaf whose path ends with a parameter's path and has
  its shape (params, EMA, optimizer moments) shares that parameter's sharding; the rest
  (counters, schedule counts) is replicated."""
  param_abstract = abstract_state.params
  by_path = {}
  for (path, sh), x in zip(jax.tree_util.tree_leaves_with_path(param_shardings),
                           jax.tree.leaves(param_abstract)):
    by_path[_path_key(path)] = (sh, x.shape)
  replicated = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    key = _path_key(path)
    for start in range(len(key)):
      hit = by_path.get(key[start:])
      if hit is not None and hit[1] == leaf.shape:
        return hit[0]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def _plan(init_params_fn, key, tx, mesh, rules):
  """(init_state(key) -> unboxed TrainState, its abstract value, its shardings)."""
  def init_state(k):
    return create_train_state(nn.unbox(init_params_fn(k)), tx)

  def boxed_and_state(k):  # one abstract trace gives the logical names and the state layout
    boxed = init_params_fn(k)
    return boxed, create_train_state(nn.unbox(boxed), tx)

  abstract_boxed, abstract_state = jax.eval_shape(boxed_and_state, key)
  param_shardings = sharding_lib.logical_shardings(abstract_boxed, mesh, rules)
  return init_state, abstract_state, match_state_shardings(abstract_state, param_shardings, mesh)


def init_train_state(*, init_params_fn: Callable[[jax.Array], Any], key: jax.Array,
                     tx: optax.GradientTransformation, mesh: Mesh,
                     rules: sharding_lib.Rules) -> tuple[TrainState, TrainState]:
  """Creates the train state directly in its shards; returns (state, state shardings).

  `init_params_fn(key)` returns the (logically boxed) parameter tree, e.g.
  `lambda k: model.init(k, *example_inputs)['params']`. Nothing is materialized whole: the
  shardings come from `jax.eval_shape` and the jitted init writes each shard in place.
  """
  init_state, _, shardings = _plan(init_params_fn, key, tx, mesh, rules)
  # No logical-rules context here: unboxing a parameter inside `init` would then constrain it by
  # its names, and flax rejects names that repeat (conv kernels); out_shardings place it anyway.
  with jax.set_mesh(mesh):
    state = jax.jit(init_state, out_shardings=shardings)(key)
  return state, shardings


def abstract_train_state(*, init_params_fn: Callable[[jax.Array], Any], key: jax.Array,
                         tx: optax.GradientTransformation, mesh: Mesh,
                         rules: sharding_lib.Rules) -> tuple[TrainState, TrainState]:
  """(ShapeDtypeStructs of the state carrying their target shardings, the shardings): a
  restore target that costs no memory."""
  _, abstract_state, shardings = _plan(init_params_fn, key, tx, mesh, rules)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)
  return target, shardings


def param_count(params: Any) -> int:
  """Total number of parameters in a tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
