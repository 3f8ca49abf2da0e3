"""Parameters of distillation: the teacher restored from a training workdir, and the student's
sharded train state initialized from a source parameter tree (the teacher, or the previous
round's student) with a fresh optimizer.

A guided-distillation student has the teacher's parameters plus the guidance-weight embedding
(zero-initialized in the U-Net, so the student starts as its teacher); `merge_params` takes every
parameter the source has and keeps the fresh initialization of the rest.
"""
import json
import os
from typing import Any, Callable, Optional

import flax.linen as nn
from flax import traverse_util
import jax
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections

from vdm_jax import sharding as sharding_lib
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import state as state_lib
import orbax.checkpoint as ocp


def merge_params(fresh: Any, source: Any) -> Any:
  """`fresh` with every leaf that `source` also has replaced by the source's leaf.

  Raises ValueError if the source has a parameter the fresh tree lacks, or one of another shape
  (the student is not the teacher's architecture).
  """
  flat_fresh = traverse_util.flatten_dict(fresh, sep="/")
  flat_source = traverse_util.flatten_dict(source, sep="/")
  problems = []
  for path, leaf in flat_source.items():
    if path not in flat_fresh:
      problems.append(f"{path}: in the teacher, absent in the student")
    elif tuple(flat_fresh[path].shape) != tuple(leaf.shape):
      problems.append(f"{path}: {tuple(leaf.shape)} in the teacher, "
                      f"{tuple(flat_fresh[path].shape)} in the student")
  if problems:
    raise ValueError("The student model does not contain the teacher's parameters; keep the "
                     "`model` section of the teacher (only model.guidance_weight_conditioning "
                     "may be added):\n  " + "\n  ".join(problems[:8]))
  merged = {p: flat_source.get(p, leaf) for p, leaf in flat_fresh.items()}
  return traverse_util.unflatten_dict(merged, sep="/")


def param_shardings(init_params_fn: Callable[[jax.Array], Any], mesh, rules) -> Any:
  """NamedShardings of the (unboxed) parameter tree that `init_params_fn` creates."""
  abstract = jax.eval_shape(init_params_fn, jax.random.key(0))
  return sharding_lib.logical_shardings(abstract, mesh, rules)


def init_student_state(*, source_params: Any, source_shardings: Any,
                       init_params_fn: Callable[[jax.Array], Any], key: jax.Array, tx, mesh,
                       rules) -> tuple[state_lib.TrainState, state_lib.TrainState]:
  """A fresh TrainState (step 0, new optimizer state, EMA = params) whose parameters are
  `source_params` merged into a fresh init of the student; created directly in its shards.

  Returns (state, state shardings).
  """
  _, shardings = state_lib.abstract_train_state(init_params_fn=init_params_fn, key=key, tx=tx,
                                                mesh=mesh, rules=rules)

  def build(source, k):
    params = merge_params(nn.unbox(init_params_fn(k)), source)
    return state_lib.create_train_state(params, tx)

  replicated = NamedSharding(mesh, PartitionSpec())
  with jax.set_mesh(mesh):
    state = jax.jit(build, in_shardings=(source_shardings, replicated),
                    out_shardings=shardings)(source_params, key)
  return state, shardings


def saved_train_config(workdir: str) -> dict:
  """The config.json that a training (or distillation round) workdir holds, as a dict."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ckpt_lib.NoCheckpointError(
        f"{workdir} is not a training workdir (no config.json and checkpoints/ in it). Pass the "
        "--workdir of a finished `--mode=train` run of this stage (or a distillation round "
        "directory) as the teacher.")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def restore_params(*, workdir: str, config, init_params_fn: Callable[[jax.Array], Any],
                   mesh, rules, step: int = 0, use_ema: bool = True
                   ) -> tuple[Any, Any, int]:
  """Restores the parameters of the TrainState checkpointed in `workdir/checkpoints`.

  Args:
    workdir: a training workdir (or a distillation round directory).
    config: a config whose `model` section describes the checkpointed model; its `train`
      section is replaced by the saved one to rebuild the optimizer-state layout.
    init_params_fn: key -> boxed params of that model (shapes and logical names).
    step: checkpoint step, 0 = the latest.
    use_ema: return the EMA parameters (else the raw ones).

  Returns:
    (params on their shardings, the shardings, the restored step).
  """
  saved = saved_train_config(workdir)
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    if "train" in saved:
      cfg.train = ml_collections.ConfigDict(saved["train"])
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise ckpt_lib.NoCheckpointError(f"{workdir}/checkpoints holds no checkpoint; train the "
                                       "teacher first.")
    if int(step) and int(step) not in checkpointer.all_steps():
      raise ckpt_lib.NoCheckpointError(f"{workdir}/checkpoints has no step {step}; it holds "
                                       f"{checkpointer.all_steps()}.")
    target, shardings = state_lib.abstract_train_state(
        init_params_fn=init_params_fn, key=jax.random.key(0),
        tx=optimizer_lib.make_optimizer(cfg.train, cfg.model), mesh=mesh, rules=rules)
    if int(step):
      state = checkpointer.restore(int(step), target_state=target, data_iter=None, config=cfg)
    else:
      state, step = checkpointer.restore_latest(
          target_state=target, data_iter=None, config=cfg,
          fallback=bool(cfg.train.get("checkpoint_fallback", True)))
  finally:
    checkpointer.close()
  if use_ema:
    return state.ema_params, shardings.ema_params, step
  return state.params, shardings.params, step


def read_checkpoint_config(checkpoint_dir: str, step: Optional[int] = None) -> dict:
  """The config item of an orbax checkpoint written by `train.checkpoint.Checkpointer`
  (the latest step when `step` is None), as a dict."""
  manager = ocp.CheckpointManager(checkpoint_dir,
                                  item_handlers={ckpt_lib.CONFIG: ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    restored = manager.restore(step, args=ocp.args.Composite(
        **{ckpt_lib.CONFIG: ocp.args.JsonRestore()}))
    return restored[ckpt_lib.CONFIG]
  finally:
    manager.close()
