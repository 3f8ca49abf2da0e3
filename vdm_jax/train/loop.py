"""The training loop: `train_and_evaluate(config, workdir)`.

Builds the mesh, the text store and the grain iterator, creates (or restores) the sharded
train state, compiles the train step once (its XLA FLOPs give TFLOP/s and MFU), then steps:
metrics every `train.log_every` steps, checkpoints every `train.checkpoint_every`, samples
from the EMA parameters every `train.sample_every`. SIGTERM saves a checkpoint and returns;
`train.max_consecutive_nonfinite` skipped (NaN/Inf) steps in a row stop with NonFiniteError,
leaving the last good checkpoint as the newest one.

Workdir layout: config.json, metrics.jsonl, tensorboard/, checkpoints/<step>/,
samples/step_XXXXXX/{000.gif, 000.mp4, ..., prompts.txt}.
"""
import json
import os
import sys
from typing import Optional

from absl import logging
import jax
import numpy as np

from vdm_jax import errors
from vdm_jax import sharding as sharding_lib
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import inputs
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import objective
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import preemption
from vdm_jax.train import state as state_lib
from vdm_jax.train import step as step_lib
from vdm_jax.train import workdir_lock


class NonFiniteError(errors.UserError, RuntimeError):
  """Too many consecutive train steps had a NaN/Inf loss or gradient."""


def check_loop_config(config) -> None:
  """Raises ValueError naming the key for loop settings that cannot work (before compiling)."""
  t = config.train
  optimizer_lib.check_train_config(t)
  for key in ("batch_size", "num_steps", "log_every", "checkpoint_every",
              "max_consecutive_nonfinite"):
    if int(t[key]) < 1:
      raise errors.ConfigError(f"train.{key}={t[key]} must be >= 1.")
  for key in ("sample_every", "keep_every", "keep_last"):
    if int(t[key]) < 0:
      raise errors.ConfigError(f"train.{key}={t[key]} must be >= 0 (0 turns it off).")
  if not 0.0 <= float(config.diffusion.cond_drop_prob) < 1.0:
    raise errors.ConfigError(
        f"diffusion.cond_drop_prob={config.diffusion.cond_drop_prob} must be in "
        "[0, 1).")


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


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(ckpt_lib.config_to_dict(config), f, indent=2, sort_keys=True)


class _Window:
  """Host metrics of the steps since the last log line."""

  def __init__(self):
    self.rows: list[dict] = []

  def add(self, row: dict) -> None:
    self.rows.append(row)

  def summary(self) -> dict:
    """Means over the window of finite values; counters and schedules at the latest step."""
    out = {}
    last = self.rows[-1]
    for k in last:
      if k in ("nonfinite_count", "consecutive_nonfinite", "lr", "ema_decay"):
        out[k] = last[k]
      elif k != "finite":
        vals = [r[k] for r in self.rows if k in r and np.isfinite(r[k])]
        if vals or k == "loss":  # loss is reported even when NaN; others only when present
          out[k] = float(np.mean(vals)) if vals else float("nan")
    self.rows = []
    return out


class Trainer:
  """Owns the pieces of one training run; `run()` steps until done, preempted or diverged."""

  def __init__(self, config, workdir: str):
    from vdm_jax.models.unet import SpaceTimeUNet  # pylint: disable=g-import-not-at-top
    check_loop_config(config)
    self.config, self.workdir = config, workdir
    self.mesh = sharding_lib.create_mesh(config.sharding)
    self.rules = sharding_lib.logical_rules(config.sharding)
    sharding_lib.check_batch_divisible(int(config.train.batch_size), self.mesh, self.rules)
    logging.info("Mesh %s over %d devices (%d processes).", dict(self.mesh.shape),
                 jax.device_count(), jax.process_count())

    self.encoder, store = inputs.text_conditioning(config)
    self.data_iter = inputs.make_data_iterator(config, store)
    self._pending = next(self.data_iter)  # the first batch; fixes the step's input layout
    self.model = SpaceTimeUNet(config=config.model)
    t = config.train
    self.tx = optimizer_lib.make_optimizer(t)
    init_fn = objective.init_params_fn(config, model=self.model,
                                       batch_like=inputs.select(self._pending))
    self.checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep_last=int(t.keep_last),
        keep_every=int(t.keep_every), async_save=bool(t.get("async_checkpointing", True)),
        quarantine=True)
    key = jax.random.key(int(config.seed))
    if self.checkpointer.latest_step() is None:
      self.state, self.shardings = state_lib.init_train_state(
          init_params_fn=init_fn, key=key, tx=self.tx, mesh=self.mesh, rules=self.rules)
    else:
      target, self.shardings = state_lib.abstract_train_state(
          init_params_fn=init_fn, key=key, tx=self.tx, mesh=self.mesh, rules=self.rules)
      self.state, _ = self.checkpointer.restore_latest(
          target_state=target, data_iter=self.data_iter, config=config,
          fallback=bool(t.get("checkpoint_fallback", True)))
      self._pending = next(self.data_iter)  # the restored iterator's next batch
    logging.info("Parameters: %d.", state_lib.param_count(self.state.params))
    _write_config(config, workdir)  # after the restore checked that the checkpoint matches

    batch_spec = inputs.global_batch_spec(self._pending, self.mesh, self.rules)
    step_fn = step_lib.make_train_step(
        loss_fn=objective.make_loss_fn(config, self.model), tx=self.tx,
        lr_schedule=optimizer_lib.learning_rate_schedule(t), train_cfg=t,
        seed=int(config.seed), cond_drop_prob=float(config.diffusion.cond_drop_prob),
        mesh=self.mesh, rules=self.rules, state_shardings=self.shardings,
        batch_like=batch_spec,
        constrain_activations=bool(config.sharding.get("constrain_activations", True)))
    self.compiled = step_fn.lower(self.state, batch_spec).compile()
    self.throughput = metrics_lib.Throughput(
        global_batch=int(t.batch_size),
        flops_per_device_step=flops_lib.compiled_flops(
            self.compiled, loop_trip_count=int(t.grad_accum_steps)),
        peak_flops_per_device=flops_lib.peak_flops_per_device())
    self.writer = metrics_lib.MetricsWriter(workdir)
    self.sampler = None
    if int(t.sample_every) > 0:
      from vdm_jax.train import samples  # pylint: disable=g-import-not-at-top
      self.sampler = samples.PeriodicSampler(
          config, self.model, workdir=workdir, mesh=self.mesh,
          param_shardings=self.shardings.ema_params, text_encoder=self.encoder)

  def _next_host_batch(self) -> dict:
    if self._pending is not None:
      batch, self._pending = self._pending, None
      return batch
    return next(self.data_iter)

  def _save(self, step: int) -> bool:
    return save_if_good(self.checkpointer, step, self.state, self.data_iter, self.config)

  def _consume(self, step: int, metrics: dict, window: _Window, progress) -> None:
    """Host-side bookkeeping of one finished step: divergence check, logs, metric files."""
    row = step_lib.host_scalars(metrics)
    window.add(row)
    t = self.config.train
    check_nonfinite_streak(row, step=step, limit=int(t.max_consecutive_nonfinite),
                           checkpointer=self.checkpointer)
    if step % int(t.log_every) == 0 or step == int(t.num_steps):
      scalars = {**window.summary(), **self.throughput.update(step)}
      line = metrics_lib.format_log_line(step, int(t.num_steps), scalars)
      if jax.process_index() == 0:
        logging.info("%s", line)
        if progress is not None:
          progress.set_postfix_str(f"loss {scalars.get('loss', float('nan')):.4f}")
      self.writer.write_scalars(step, scalars)

  def run(self, watcher: Optional[preemption.PreemptionWatcher] = None
          ) -> state_lib.TrainState:
    """Trains to `train.num_steps`; returns the final state (also on preemption). `watcher`:
    one installed before the setup (so a SIGTERM while compiling is honoured too)."""
    t = self.config.train
    total = int(t.num_steps)
    step = int(np.asarray(self.state.step.addressable_data(0)))
    watcher = watcher or preemption.PreemptionWatcher()
    if watcher.should_stop():      # signalled during setup: nothing new to save
      watcher.close()
      self.writer.close()
      self.checkpointer.close()
      logging.warning("Stopped by a signal before the first step (during setup or "
                      "compilation) at step %d; the checkpoints are unchanged. Run the same "
                      "command again to resume.", step)
      return self.state
    progress = None
    if jax.process_index() == 0 and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      progress = tqdm.tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
    window, lagged = _Window(), None
    self.throughput.reset(step)
    try:
      while step < total:
        host = self._next_host_batch()
        batch = sharding_lib.host_to_global(inputs.select(host), self.mesh, self.rules)
        self.state, metrics = self.compiled(self.state, batch)
        step += 1
        if lagged is not None:  # the previous step has finished by now or soon
          self._consume(*lagged, window, progress)
        lagged = (step, metrics)
        if progress is not None:
          progress.update(1)
        if step % int(t.checkpoint_every) == 0 or step == total:
          self._consume(*lagged, window, progress)
          lagged = None
          self._save(step)
        if self.sampler is not None and step % int(t.sample_every) == 0:
          if lagged is not None:
            self._consume(*lagged, window, progress)
            lagged = None
          paths = self.sampler(step, self.state.ema_params, batch=host)
          logging.info("Wrote %d sample files for step %d.", len(paths), step)
          self.throughput.reset(step)
        if watcher.should_stop():
          if lagged is not None:
            self._consume(*lagged, window, progress)
            lagged = None
          self._save(step)
          self.checkpointer.wait()
          latest = self.checkpointer.latest_step()
          logging.warning("Preempted: checkpoint of step %s saved; exiting cleanly at step %d.",
                          latest, step)
          break
      if lagged is not None:
        self._consume(*lagged, window, progress)
      self.checkpointer.wait()
    finally:
      watcher.close()
      if progress is not None:
        progress.close()
      self.writer.close()
      self.checkpointer.close()
    return self.state


def train_and_evaluate(config, workdir: str) -> state_lib.TrainState:
  """Trains the stage that `config` describes in `workdir`, resuming from its latest checkpoint.

  Holds the work directory's lock meanwhile (a second run on it refuses). Returns the final
  train state. Raises NonFiniteError after too many skipped steps in a row,
  `checkpoint.CheckpointError` for a checkpoint of another model,
  `checkpoint.CorruptCheckpointError` when no checkpoint passes its checksums (a corrupt newest
  one is set aside and the newest good one restored, unless train.checkpoint_fallback=False),
  `checkpoint.CheckpointSaveError` when a save fails, and `WorkdirLockedError`.
  """
  sharding_lib.maybe_initialize_distributed(config)
  metrics_lib.quiet_library_logs()
  watcher = preemption.PreemptionWatcher()   # from the start: SIGTERM while compiling stops too
  try:
    with workdir_lock.WorkdirLock(workdir):
      return Trainer(config, workdir).run(watcher)
  finally:
    watcher.close()
