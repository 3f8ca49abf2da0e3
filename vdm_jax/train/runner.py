"""The step runner every trainer shares: `StepRunner(...).run(state, batches)`.

It owns the loop mechanics: steps from the state's step to `Cadence.num_steps`, calling the
jitted step on (state, global batch); reads each step's metrics one step late (the host never
waits for the device step it just dispatched); logs and writes metrics every
`Cadence.log_every` steps and at the end; saves a checkpoint every `Cadence.checkpoint_every`
steps and at the end; stops with NonFiniteError after `Cadence.max_consecutive_nonfinite`
skipped (NaN/Inf) steps in a row; and, on SIGTERM (`preemption.PreemptionWatcher`), saves the
step reached and stops. Per-trainer extras are callbacks: periodic `Hook`s (samples, eval),
the window summary, the log prefix and what a preemption means (`on_preempted`).

Per step: dispatch; read the previous step's metrics; checkpoint when due; run the due hooks
(metrics read first; their time is left out of the throughput); check for a signal (then
save the step unless it was just saved, wait for the save and call `on_preempted`).
"""
import dataclasses
import itertools
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np

from vdm_jax import errors
from vdm_jax import sharding as sharding_lib
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import inputs
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import preemption
from vdm_jax.train import step as step_lib

# step_fn(state, global batch) -> (new state, metrics: dict of replicated scalars).
StepFn = Callable[[Any, Any], tuple[Any, dict]]
# save(step, state) -> whether a save started.
SaveFn = Callable[[int, Any], bool]


class NonFiniteError(errors.UserError, RuntimeError):
  """Too many consecutive train steps had a NaN/Inf loss or gradient."""


def save_if_good(checkpointer: ckpt_lib.Checkpointer, step: int, state, data_iter,
                 config) -> bool:
  """Saves `state` as `step` unless it sits in a non-finite streak (its last step was skipped);
  then the last good checkpoint stays the newest. Returns whether a save started."""
  if int(np.asarray(state.consecutive_nonfinite.addressable_data(0))) > 0:
    logging.warning("Not checkpointing step %d: it follows skipped non-finite steps.", step)
    return False
  return checkpointer.save(step, state, data_iter, config)


def check_nonfinite_streak(row: dict, *, step: int, limit: int,
                           checkpointer: ckpt_lib.Checkpointer) -> None:
  """Raises NonFiniteError once `limit` steps in a row were skipped as NaN/Inf (`row` holds the
  host metrics of `step`), naming the last good checkpoint."""
  if row["consecutive_nonfinite"] < limit:
    return
  checkpointer.wait()
  latest = checkpointer.latest_step()
  where = (f"step {latest} in {checkpointer.directory}" if latest is not None
           else "none (no checkpoint was written yet)")
  raise NonFiniteError(
      f"Stopping at step {step}: the loss or gradient norm was NaN/Inf for "
      f"{int(row['consecutive_nonfinite'])} consecutive steps "
      f"(train.max_consecutive_nonfinite={limit}); those updates were skipped. The last good "
      f"checkpoint is {where}. Lower train.lr, check the data, or raise "
      "train.max_consecutive_nonfinite.")


def state_step(state) -> int:
  """The step counter of a (sharded) train state as a Python int."""
  return int(np.asarray(state.step.addressable_data(0)))


def to_global_batch(host_batch: dict, *, mesh, rules) -> dict:
  """The train step's entries of this process's host batch as global sharded arrays."""
  return sharding_lib.host_to_global(inputs.select(host_batch), mesh, rules)


def prepend(first: Optional[dict], batches: Iterator[dict]) -> Iterator[dict]:
  """`first` (a batch already read, e.g. to fix the step's input layout; None: none), then the
  rest of `batches`, read lazily (a checkpointed iterator's position stays exact)."""
  return itertools.chain(() if first is None else (first,), batches)


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the runner stops, logs, checkpoints and gives up on non-finite steps."""
  num_steps: int
  log_every: int
  checkpoint_every: int
  max_consecutive_nonfinite: int

  @classmethod
  def from_config(cls, train_cfg) -> "Cadence":
    """From `config.train` (num_steps, log_every, checkpoint_every,
    max_consecutive_nonfinite)."""
    return cls(num_steps=int(train_cfg.num_steps), log_every=int(train_cfg.log_every),
               checkpoint_every=int(train_cfg.checkpoint_every),
               max_consecutive_nonfinite=int(train_cfg.max_consecutive_nonfinite))


@dataclasses.dataclass(frozen=True)
class Hook:
  """`fn(step, state, host_batch)` after every step that is a multiple of `every` (0: never).

  The metrics up to that step are read and logged first, and the hook's time is left out of
  the throughput (its window restarts after it)."""
  every: int
  fn: Callable[[int, Any, dict], None]

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0


@dataclasses.dataclass
class RunResult:
  """How `StepRunner.run` ended.

  Attributes:
    state: the final state.
    step: the step reached.
    preempted: whether a signal stopped the run (before the first step or after `step`).
    last_scalars: the scalars of the last metrics line written (None if none was).
  """
  state: Any
  step: int
  preempted: bool
  last_scalars: Optional[dict]


class StepRunner:
  """Runs a jitted step from a state's step to `cadence.num_steps` (see the module docstring).

  Args:
    step_fn: (state, global batch) -> (state, metrics); metrics are replicated scalars that
      include 'consecutive_nonfinite' (and, for the log line, usually 'loss').
    cadence: when to stop, log, checkpoint and give up on non-finite steps.
    checkpointer: the run's Checkpointer (waited on; its owner closes it).
    save: (step, state) -> bool; starts a checkpoint (e.g. `save_if_good` bound to the data
      iterator and config). Called at most once per step.
    writer: MetricsWriter of the scalars; `run` closes it.
    throughput: rates for the log line; restarted at the first step and after hooks.
    put_batch: host batch -> the step's global batch (e.g. `to_global_batch` bound to a mesh).
    hooks: periodic extras (samples, eval).
    summarize: host metric rows since the last log line -> their scalars (before the rates).
    log_prefix: prepended to every log line (e.g. '[round] ').
    on_preempted: (step) -> None, called once a signal's checkpoint is saved (after the wait);
      it may raise. By default the run logs where it stopped and returns. (A signal before
      the first step, see `run`, is only logged.)
    progress_bar: a tqdm bar on process 0 when stderr is a terminal.
  """

  def __init__(self, step_fn: StepFn, *, cadence: Cadence, checkpointer: ckpt_lib.Checkpointer,
               save: SaveFn, writer: metrics_lib.MetricsWriter,
               throughput: metrics_lib.Throughput, put_batch: Callable[[dict], Any],
               hooks: Sequence[Hook] = (),
               summarize: Callable[[list[dict]], Mapping[str, float]] = (
                   metrics_lib.window_means),
               log_prefix: str = "", on_preempted: Optional[Callable[[int], None]] = None,
               progress_bar: bool = False):
    self.step_fn, self.cadence, self.checkpointer = step_fn, cadence, checkpointer
    self.save, self.writer, self.throughput = save, writer, throughput
    self.put_batch, self.hooks, self.summarize = put_batch, tuple(hooks), summarize
    self.log_prefix, self.progress_bar = log_prefix, progress_bar
    self.on_preempted = on_preempted or self._log_preempted
    self.state = None          # the latest state (also after an exception)
    self._rows: list[dict] = []  # host metrics since the last log line
    self._lagged = None        # (step, metrics) not yet read on the host
    self._progress = None
    self._last_scalars = None

  def run(self, state, batches: Iterable[dict],
          watcher: Optional[preemption.PreemptionWatcher] = None) -> RunResult:
    """Steps `state` on `batches` (host batches) to `cadence.num_steps`.

    Args:
      state: the train state to continue from (its `step` is the first step's index).
      batches: host batches, one read per step.
      watcher: one installed before the setup, so that a signal while compiling is honoured
        (checked before the first step: then nothing is run or saved). None: the run installs
        its own. Closed either way.

    Returns:
      A RunResult. Raises NonFiniteError after too many skipped steps in a row, and whatever
      `on_preempted`, a hook or a save raises; the writer and watcher are closed either way.
    """
    self.state, step, total = state, state_step(state), self.cadence.num_steps
    batches = iter(batches)
    early = watcher is not None and watcher.should_stop()
    watcher = watcher or preemption.PreemptionWatcher()
    preempted, saved = early, None
    try:
      if early:
        logging.warning("Stopped by a signal before the first step (during setup or "
                        "compilation) at step %d; the checkpoints are unchanged. Run the same "
                        "command again to resume.", step)
        return RunResult(self.state, step, True, None)
      self._progress = self._make_progress(step, total)
      self.throughput.reset(step)
      while step < total:
        host = next(batches)
        self.state, metrics = self.step_fn(self.state, self.put_batch(host))
        step += 1
        self._flush()  # the previous step has finished by now or soon
        self._lagged = (step, metrics)
        if self._progress is not None:
          self._progress.update(1)
        if step % self.cadence.checkpoint_every == 0 or step == total:
          self._flush()
          self.save(step, self.state)
          saved = step
        for hook in self.hooks:
          if hook.due(step):
            self._flush()
            hook.fn(step, self.state, host)
            self.throughput.reset(step)
        if watcher.should_stop():
          self._flush()
          if saved != step:
            self.save(step, self.state)
          self.checkpointer.wait()
          preempted = True
          self.on_preempted(step)
          break
      self._flush()
      self.checkpointer.wait()
    finally:
      watcher.close()
      if self._progress is not None:
        self._progress.close()
        self._progress = None
      self.writer.close()
    return RunResult(self.state, step, preempted, self._last_scalars)

  def _make_progress(self, step: int, total: int):
    if not self.progress_bar or jax.process_index() != 0 or not sys.stderr.isatty():
      return None
    import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm.tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

  def _flush(self) -> None:
    """Host-side bookkeeping of the lagged step, if any: divergence check, logs, metric files."""
    if self._lagged is None:
      return
    step, metrics = self._lagged
    self._lagged = None
    row = step_lib.host_scalars(metrics)
    self._rows.append(row)
    check_nonfinite_streak(row, step=step, limit=self.cadence.max_consecutive_nonfinite,
                           checkpointer=self.checkpointer)
    if step % self.cadence.log_every == 0 or step == self.cadence.num_steps:
      self._log(step)

  def _log(self, step: int) -> None:
    scalars = {**self.summarize(self._rows), **self.throughput.update(step)}
    self._rows = []
    line = metrics_lib.format_log_line(step, self.cadence.num_steps, scalars)
    if jax.process_index() == 0:
      logging.info("%s%s", self.log_prefix, line)
      if self._progress is not None:
        self._progress.set_postfix_str(f"loss {scalars.get('loss', float('nan')):.4f}")
    self.writer.write_scalars(step, scalars)
    self._last_scalars = scalars

  def _log_preempted(self, step: int) -> None:
    logging.warning("Preempted: checkpoint of step %s saved; exiting cleanly at step %d.",
                    self.checkpointer.latest_step(), step)
