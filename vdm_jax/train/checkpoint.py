"""Orbax checkpoints of the train state, the grain iterator state and the config.

A step directory holds three items: `state` (the sharded `TrainState`, restored onto whatever
mesh the target shardings describe), `data` (each process's grain iterator state as JSON,
through grain's orbax handler) and `config` (the experiment config as JSON). Before restoring,
the saved config's `model` section and parameter shapes are compared with the current ones, so
a checkpoint of another model fails with a message that names the differences, and nothing is
written over it.
"""
import dataclasses
import json
import os
from typing import Any, Mapping, Optional

from absl import logging
import grain
import orbax.checkpoint as ocp

from vdm_jax.models import unet_spec

STATE, DATA, CONFIG = "state", "data", "config"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: unreadable, or from another model configuration."""


def config_to_dict(config) -> dict:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _flat(tree: Any, prefix: str = "") -> dict[str, tuple]:
  """Nested dicts of arrays / array metadata -> {'a/b/c': shape}."""
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}/"))
  elif tree is not None:
    out[prefix.rstrip("/")] = tuple(getattr(tree, "shape", ()))
  return out


def _is_off(value) -> bool:
  """An optional feature switched off: what a key that an older config lacks means."""
  return value is False or value is None or value == "none"


def _with_optional_model_keys(model: Mapping[str, Any]) -> dict:
  """A saved `model` section with the optional keys added since it was written
  (`UNetSpec.OPTIONAL`) at their defaults, which is what such a checkpoint was trained with."""
  model = dict(model)
  defaults = {f.name: f.default for f in dataclasses.fields(unet_spec.UNetSpec)}
  for key in unet_spec.UNetSpec.OPTIONAL:
    model.setdefault(key, defaults[key])
  return model


def _dict_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Human-readable differences between two nested config dicts. A key present on one side
  only counts when it switches something on there (keys added to the schema later default to
  off, so older checkpoints stay loadable)."""
  diffs = []
  for k in sorted(set(saved) | set(current)):
    name = f"{prefix}{k}"
    if k not in saved:
      if not _is_off(current[k]):
        diffs.append(f"{name}: absent in the checkpoint, {current[k]!r} now")
    elif k not in current:
      if not _is_off(saved[k]):
        diffs.append(f"{name}: {saved[k]!r} in the checkpoint, absent now")
    elif isinstance(saved[k], dict) and isinstance(current[k], dict):
      diffs.extend(_dict_diff(saved[k], current[k], name + "."))
    elif saved[k] != current[k]:
      diffs.append(f"{name}: {saved[k]!r} in the checkpoint, {current[k]!r} now")
  return diffs


def param_shape_diff(saved_params: dict[str, tuple], current_params: dict[str, tuple],
                     limit: int = 8) -> list[str]:
  """Differences between two {path: shape} maps (missing, extra, or reshaped parameters)."""
  diffs = []
  for path in sorted(set(saved_params) | set(current_params)):
    s, c = saved_params.get(path), current_params.get(path)
    if s != c:
      diffs.append(f"params/{path}: {s if s is not None else 'absent'} in the checkpoint, "
                   f"{c if c is not None else 'absent'} now")
  if len(diffs) > limit:
    diffs = diffs[:limit] + [f"... and {len(diffs) - limit} more"]
  return diffs


class Checkpointer:
  """Saves and restores (state, data iterator, config) under `directory` with orbax.

  Keeps the last `keep_last` checkpoints and, in addition, every step that is a multiple of
  `keep_every` (0: none). Saves of the state are asynchronous; `wait()` blocks on them.
  Every process must call `save` and `restore` (they are collective).
  """

  def __init__(self, directory: str, *, keep_last: int = 3, keep_every: int = 0,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)   # orbax refuses relative paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last if keep_last > 0 else None,
        keep_period=keep_every if keep_every > 0 else None,
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any, config) -> bool:
    """Starts saving `state` (+ iterator state + config) as `step`; False if it exists."""
    if step in self._manager.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state),
             CONFIG: ocp.args.JsonSave(config_to_dict(config))}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    logging.info("Checkpoint of step %d %s to %s.", step, "started" if saved else "skipped",
                 self.directory)
    return saved

  def _where(self, step: int) -> str:
    return f"{self.directory}/{step}"

  def check_compatible(self, step: int, target_state: Any, config) -> None:
    """Raises CheckpointError unless checkpoint `step` is readable and holds the same model
    (same config `model` section and the same parameter names and shapes) as `config`."""
    try:
      saved = self._manager.restore(
          step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
      saved_config = saved[CONFIG]
      meta = self._manager.item_metadata(step)[STATE]
      meta_tree = getattr(meta, "tree", meta)
      saved_params = _flat(meta_tree["params"])
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"The checkpoint at {self._where(step)} is unreadable ({type(e).__name__}: {e}). "
          "Nothing was overwritten. Move that step directory aside to resume from an earlier "
          "checkpoint, or use a fresh --workdir.") from e
    current_model = config_to_dict(config).get("model", {})
    diffs = _dict_diff(_with_optional_model_keys(saved_config.get("model", {})),
                       _with_optional_model_keys(current_model), "model.")
    current_params = _flat(target_state.params)
    diffs += param_shape_diff(saved_params, current_params)
    if diffs:
      raise CheckpointError(
          f"The checkpoint at {self._where(step)} is from another model configuration:\n  "
          + "\n  ".join(diffs) + "\nNothing was overwritten. Use the config it was trained "
          "with, or a fresh --workdir for the new model.")

  def restore(self, step: int, *, target_state: Any, data_iter: Any, config) -> Any:
    """Checks compatibility, then restores the state onto the target's shardings (any mesh)
    and sets `data_iter` to the saved position. Returns the restored state."""
    self.check_compatible(step, target_state, config)
    items = {STATE: ocp.args.StandardRestore(target_state)}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"Restoring {self._where(step)} failed ({type(e).__name__}: {e}). The model "
          "matches, so the optimizer or train-state layout may differ (train.optimizer, "
          "train.grad_clip), or the data iterator state is missing for this number of "
          "processes. Nothing was overwritten.") from e
    logging.info("Restored step %d from %s.", step, self.directory)
    return restored[STATE]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
