"""Orbax checkpoints of the train state, the grain iterator state and the config, verified.

A step directory holds four items: `state` (the sharded `TrainState`, restored onto whatever
mesh the target shardings describe), `data` (each process's grain iterator state as JSON,
through grain's orbax handler), `config` (the experiment config as JSON) and `digests` (two
32-bit checksums of every array of the state, computed from the values at save time and
committed atomically with them). Once orbax has committed a step, `vdm_jax_files.json` records
the size and sha256 of every file in it.

Restoring verifies both: every file against its recorded sha256, then every restored array
against its digest, so a flipped byte, a truncated or a missing file is caught and named (the
file and the array). `restore_latest` falls back: a corrupt newest step is renamed
`corrupt-<step>-<time>` (never deleted; orbax no longer lists it) with a REASON.txt, a warning
names it, and the newest good step is restored (`train.checkpoint_fallback=False` refuses
instead). Before restoring, the saved config's `model` section and parameter shapes are compared
with the current ones, so a checkpoint of another model fails with a message that names the
differences, and nothing is written over it. A save that fails (a full disk) stops the run with
`CheckpointSaveError`; the newest committed step stays good.

`restore_ema_params(config, workdir, mesh=...)` restores what sampling needs, the EMA
parameters of a workdir's checkpoint (`vdm_jax.sample.stage.load_stage`);
`restore_workdir_ema(workdir, mesh=...)` does it with the config the workdir saved
(`train.init_from`, inflation).
"""
import json
import os
import time
from typing import Any, Mapping, Optional

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from vdm_jax import errors
from vdm_jax import integrity
from vdm_jax import sharding as sharding_lib
from vdm_jax.models import registry
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import state as state_lib

STATE, DATA, CONFIG, DIGESTS = "state", "data", "config", "digests"
CORRUPT_PREFIX = "corrupt-"              # a quarantined step: corrupt-<step>-<time>


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint that cannot be used: unreadable, corrupt, or of another model configuration."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint step that fails its checksums or cannot be read (an older one may be good)."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
  """A work directory without a (good) checkpoint where one is needed."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (for example a full disk); the newest committed one is good."""


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
  """Saves and restores (state, data iterator, config) under `directory` with orbax, verified.

  Keeps the last `keep_last` checkpoints and, in addition, every step that is a multiple of
  `keep_every` (0: none). Saves of the state are asynchronous; `wait()` blocks on them and
  records the file manifest of the steps they committed. `quarantine`: whether a corrupt step
  may be renamed aside (only by the run that owns the directory; readers leave it in place).
  Every process must call `save` and `restore` (they are collective).
  """

  def __init__(self, directory: str, *, keep_last: int = 3, keep_every: int = 0,
               async_save: bool = True, quarantine: bool = False):
    self.directory = os.path.abspath(directory)   # orbax refuses relative paths
    self.quarantine = quarantine
    self._unsealed: list[int] = []              # saved steps whose file manifest is pending
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last if keep_last > 0 else None,
        keep_period=keep_every if keep_every > 0 else None,
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler(),
                       DIGESTS: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def _where(self, step: int) -> str:
    return f"{self.directory}/{step}"

  # --- saving ---------------------------------------------------------------------------------

  def save(self, step: int, state: Any, data_iter: Any, config) -> bool:
    """Starts saving `state` (+ iterator state + config + digests) as `step`; False if it
    exists. Raises CheckpointSaveError if this or the previous (asynchronous) save failed."""
    self._finish_pending()
    if step in self._manager.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state),
             CONFIG: ocp.args.JsonSave(config_to_dict(config)),
             DIGESTS: ocp.args.JsonSave(integrity.tree_digests(state))}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      # Let the save's background writes end before reporting, so that nothing goes on
      # writing this step after the error.
      try:
        self._manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-except
        pass
      raise self._save_error([step], e) from e
    if saved:
      self._unsealed.append(step)
    logging.info("Checkpoint of step %d %s to %s.", step, "started" if saved else "skipped",
                 self.directory)
    return saved

  def _save_error(self, steps: list[int], e: Exception) -> CheckpointSaveError:
    """The error of a failed save of `steps`. A step that orbax committed although one of its
    writes failed (it logs some metadata errors and goes on) is set aside, never restored."""
    self._manager.reload()
    for step in steps:
      if step in self._manager.all_steps():
        self._set_aside(step, f"its save reported an error: {type(e).__name__}: {e}",
                        own_save=True)
    good = [s for s in self._manager.all_steps() if s not in steps]
    where = (f"step {max(good)} in {self.directory} is intact and the run resumes from it"
             if good else "no earlier checkpoint exists")
    return CheckpointSaveError(
        f"Saving the checkpoint of step {', '.join(map(str, steps))} to {self.directory} "
        f"failed ({type(e).__name__}: {e}). The half-written step is ignored; {where}. Free "
        "disk space (or fix the storage error) and run the same command again.")

  def _finish_pending(self) -> None:
    """Waits for asynchronous saves; records the file manifest of the steps they committed."""
    pending, self._unsealed = self._unsealed, []
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if pending:
        raise self._save_error(pending, e) from e
      logging.error("Checkpoint saving in %s reported an earlier error again: %s",
                    self.directory, e)
    if jax.process_index() != 0:
      return
    committed = set(self._manager.all_steps())
    for step in pending:
      step_dir = self._where(step)
      if step in committed and os.path.isdir(step_dir):
        try:
          integrity.write_file_manifest(step_dir)
        except OSError as e:
          raise self._save_error([step], e) from e

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk (and their manifests written)."""
    self._finish_pending()

  def close(self) -> None:
    try:
      self._finish_pending()
    finally:
      try:
        self._manager.close()
      except Exception as e:  # pylint: disable=broad-except
        # A failed save was raised by _finish_pending already; orbax repeats it on close.
        logging.error("Closing the checkpoints of %s: %s", self.directory, e)

  # --- restoring ------------------------------------------------------------------------------

  def check_compatible(self, step: int, target_state: Any, config) -> None:
    """Raises CheckpointError unless checkpoint `step` holds the same model (same config
    `model` section and the same parameter names and shapes) as `config`, and
    CorruptCheckpointError when its config or metadata cannot be read."""
    try:
      saved = self._manager.restore(
          step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
      saved_config = saved[CONFIG]
      meta = self._manager.item_metadata(step)[STATE]
      meta_tree = getattr(meta, "tree", meta)
      saved_params = _flat(meta_tree["params"])
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
          f"The checkpoint at {self._where(step)} is unreadable ({type(e).__name__}: "
          f"{e}).") from e
    current_model = config_to_dict(config).get("model", {})
    diffs = _dict_diff(registry.with_optional_keys(saved_config.get("model", {})),
                       registry.with_optional_keys(current_model), "model.")
    current_params = _flat(target_state.params)
    diffs += param_shape_diff(saved_params, current_params)
    trainable = ((saved_config.get("train") or {}).get("trainable", "all"),
                 (config.get("train") or {}).get("trainable", "all"))
    if trainable[0] != trainable[1]:
      diffs.append(f"train.trainable: {trainable[0]!r} -> {trainable[1]!r} (the optimizer state "
                   "differs; to go on training with other layers, start a fresh --workdir with "
                   f"train.init_from={os.path.dirname(self.directory)})")
    if diffs:
      raise CheckpointError(
          f"The checkpoint at {self._where(step)} is from another model configuration:\n  "
          + "\n  ".join(diffs) + "\nNothing was overwritten. Use the config it was trained "
          "with, or a fresh --workdir for the new model.")

  def restore(self, step: int, *, target_state: Any, data_iter: Any, config) -> Any:
    """Checks compatibility, restores the state onto the target's shardings (any mesh), sets
    `data_iter` to the saved position and verifies every file and array against the checksums
    recorded at save. Returns the restored state. Raises CheckpointError for another model and
    CorruptCheckpointError (naming the files and arrays) for a damaged step."""
    step_dir = self._where(step)
    file_problems = integrity.verify_file_manifest(step_dir)
    try:
      self.check_compatible(step, target_state, config)
    except CorruptCheckpointError as e:
      raise CorruptCheckpointError("\n  ".join([str(e)] + (file_problems or []))) from e
    except CheckpointError as e:
      if not file_problems:      # another model, read from intact files: the user's to fix
        raise
      raise CorruptCheckpointError(
          f"The checkpoint at {step_dir} is corrupt:\n  " + "\n  ".join(file_problems)) from e
    has_digests = os.path.isdir(os.path.join(step_dir, DIGESTS))
    items = {STATE: ocp.args.StandardRestore(target_state)}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    if has_digests:
      items[DIGESTS] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if file_problems:
        raise CorruptCheckpointError(
            f"The checkpoint at {step_dir} is corrupt:\n  " + "\n  ".join(file_problems)
            + f"\n  restoring it failed: {type(e).__name__}: {e}") from e
      raise CheckpointError(
          f"Restoring {step_dir} failed ({type(e).__name__}: {e}). The model matches, so "
          "the optimizer or train-state layout may differ (train.optimizer, train.grad_clip), "
          "or the data iterator state is missing for this number of processes. Nothing was "
          "overwritten.") from e
    array_problems = []
    if has_digests:
      array_problems = integrity.digest_mismatches(restored[DIGESTS],
                                                   integrity.tree_digests(restored[STATE]))
    if file_problems or array_problems:
      raise CorruptCheckpointError(
          f"The checkpoint at {step_dir} is corrupt:\n  "
          + "\n  ".join((file_problems or []) + array_problems))
    if not has_digests:
      logging.warning("The checkpoint at %s was written without checksums (before vdm_jax "
                      "recorded them); restored unverified.", step_dir)
    logging.info("Restored step %d from %s (%s).", step, self.directory,
                 "files and arrays verified" if file_problems is not None else
                 "arrays verified" if has_digests else "unverified")
    return restored[STATE]

  def restore_latest(self, *, target_state: Any, data_iter: Any, config,
                     fallback: bool = True) -> tuple[Any, int]:
    """Restores the newest good checkpoint: returns (state, step). A corrupt newer step is
    reported (and renamed aside when this checkpointer may `quarantine`) and the next older
    one tried; with `fallback=False` the first corrupt step raises instead. Raises
    NoCheckpointError when there is no checkpoint, CorruptCheckpointError when none is good."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise NoCheckpointError(f"{self.directory} holds no complete checkpoint.")
    failed = []
    for step in steps:
      try:
        return self.restore(step, target_state=target_state, data_iter=data_iter,
                            config=config), step
      except CorruptCheckpointError as e:
        older = [s for s in steps if s < step]
        if not fallback:
          raise CorruptCheckpointError(
              f"{e}\nRefusing to fall back (train.checkpoint_fallback=False). Set it to True "
              f"to restore the newest good step instead (older steps: {older or 'none'}), or "
              "move this step directory aside.") from e
        moved = self._set_aside(step, str(e))
        logging.warning("%s\n%s; trying %s.", e, moved,
                        f"step {older[0]}" if older else "nothing older")
        failed.append(f"step {step}: {moved}")
    raise CorruptCheckpointError(
        f"No good checkpoint in {self.directory}: every step failed its checks "
        f"({'; '.join(failed)}). Nothing was deleted. Start again with a fresh --workdir, or "
        "restore the files from a copy.")

  def _set_aside(self, step: int, reason: str, *, own_save: bool = False) -> str:
    """Renames a corrupt step to corrupt-<step>-<time> with a REASON.txt (process 0, when
    this checkpointer owns the directory, or the step is its own failed save); returns what
    was done, for the log."""
    src = self._where(step)
    if not (self.quarantine or own_save):
      return f"left in place at {src}"
    dst = os.path.join(self.directory,
                       f"{CORRUPT_PREFIX}{step}-{time.strftime('%Y%m%dT%H%M%S')}")
    if jax.process_index() == 0:
      os.rename(src, dst)
      with open(os.path.join(dst, "REASON.txt"), "w", encoding="utf-8") as f:
        f.write(reason + "\n")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"vdm_jax_checkpoint_set_aside_{step}")
    self._manager.reload()
    return f"renamed to {dst} (kept, not deleted)"


def restore_ema_params(config, workdir: str, *, step: Optional[int] = None,
                       mesh: Any) -> tuple[Any, Any, int]:
  """Restores only what sampling needs from `workdir`'s checkpoint `step` (default: the newest
  good one, falling back past a corrupt newer step unless `train.checkpoint_fallback=False`):
  returns (the EMA parameters on `mesh`, their shardings, the step).

  Raises NoCheckpointError when the workdir has no checkpoint (or no step `step`) and
  CheckpointError when it holds another model configuration.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise NoCheckpointError(
        f"No checkpoints under {directory}: train this stage first "
        f"(python -m vdm_jax.main --mode=train --config=... --workdir={workdir}).")
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise NoCheckpointError(f"{directory} holds no complete checkpoint.")
    if step is not None and int(step) not in checkpointer.all_steps():
      raise NoCheckpointError(
          f"{directory} has no step {step}; it holds {checkpointer.all_steps()}.")
    fam = registry.family(config.model)
    init_fn = fam.init_fn(fam.module(), batch_like=fam.example_batch(config))
    target, shardings = state_lib.abstract_train_state(
        init_params_fn=init_fn, key=jax.random.key(int(config.seed)),
        tx=optimizer_lib.make_optimizer(config.train, config.model), mesh=mesh,
        rules=sharding_lib.logical_rules(config.sharding))
    if step is None:    # the newest good step; a corrupt newer one is reported, left in place
      state, step = checkpointer.restore_latest(
          target_state=target, data_iter=None, config=config,
          fallback=bool(config.train.get("checkpoint_fallback", True)))
    else:               # the step asked for, or a clear error
      state = checkpointer.restore(int(step), target_state=target, data_iter=None,
                                   config=config)
  finally:
    checkpointer.close()
  return state.ema_params, shardings.ema_params, int(step)


def workdir_config(workdir: str):
  """The config a training workdir saved (its config.json), as a ConfigDict."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise NoCheckpointError(f"{workdir} is not a training workdir (it needs config.json and "
                            "checkpoints/): pass the --workdir of a `--mode=train` run.")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_workdir_ema(workdir: str, *, mesh: Any) -> tuple[Any, int, Any]:
  """(EMA parameters, step, saved config) of the newest good checkpoint of training workdir
  `workdir`, restored with the config it saved."""
  config = workdir_config(workdir)
  params, _, step = restore_ema_params(config, workdir, mesh=mesh)
  return params, step, config
