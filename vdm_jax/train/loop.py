"""The training loop: `train_and_evaluate(config, workdir)`.

Builds the mesh, the text store and the grain iterator, creates (or restores) the sharded
train state, compiles the train step once (its XLA FLOPs give TFLOP/s and MFU), then steps:
metrics every `train.log_every` steps, checkpoints every `train.checkpoint_every`, samples
from the EMA parameters every `train.sample_every`. SIGTERM saves a checkpoint and returns;
`train.max_consecutive_nonfinite` skipped (NaN/Inf) steps in a row stop with NonFiniteError,
leaving the last good checkpoint as the newest one. The steps themselves are run by
`runner.StepRunner`, which the other trainers share.

Workdir layout: config.json, metrics.jsonl, tensorboard/, checkpoints/<step>/,
samples/step_XXXXXX/{000.gif, 000.mp4, ..., prompts.txt}.
"""
import functools
import json
import os
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp

from vdm_jax import errors
from vdm_jax import sharding as sharding_lib
from vdm_jax import weights
from vdm_jax.diffusion import config_checks as diffusion_checks
from vdm_jax.models import registry
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import config_checks
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import inputs
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import objective
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import preemption
from vdm_jax.train import runner as runner_lib
from vdm_jax.train import samples
from vdm_jax.train import state as state_lib
from vdm_jax.train import step as step_lib
from vdm_jax.train import workdir_lock


# Defined with the step runner; their names here stay for the modules that use them.
NonFiniteError = runner_lib.NonFiniteError
save_if_good = runner_lib.save_if_good
check_nonfinite_streak = runner_lib.check_nonfinite_streak


def check_loop_config(config) -> None:
  """Raises ConfigError naming the key for train settings that cannot work (before compiling)."""
  problems = config_checks.train_errors(config) + diffusion_checks.diffusion_errors(
      config.diffusion)
  if problems:
    raise errors.ConfigError(problems[0] + ".")


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(ckpt_lib.config_to_dict(config), f, indent=2, sort_keys=True)


class Trainer:
  """Owns the pieces of one training run; `run()` steps until done, preempted or diverged."""

  def __init__(self, config, workdir: str, *, compile_step: bool = True):
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
    self.model = registry.family(config.model).module()
    t = config.train
    self.tx = optimizer_lib.make_optimizer(t, config.model)
    init_fn = registry.family(config.model).init_fn(self.model,
                                       batch_like=inputs.select(self._pending))
    self.checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep_last=int(t.keep_last),
        keep_every=int(t.keep_every), async_save=bool(t.get("async_checkpointing", True)),
        quarantine=True)
    key = jax.random.key(int(config.seed))
    if self.checkpointer.latest_step() is None:
      self.state, self.shardings = state_lib.init_train_state(
          init_params_fn=init_fn, key=key, tx=self.tx, mesh=self.mesh, rules=self.rules)
      if t.get("init_from", ""):
        self.state = init_from_workdir(config, t.init_from, self.state, self.shardings,
                                       self.mesh)
    else:
      target, self.shardings = state_lib.abstract_train_state(
          init_params_fn=init_fn, key=key, tx=self.tx, mesh=self.mesh, rules=self.rules)
      self.state, _ = self.checkpointer.restore_latest(
          target_state=target, data_iter=self.data_iter, config=config,
          fallback=bool(t.get("checkpoint_fallback", True)))
      self._pending = next(self.data_iter)  # the restored iterator's next batch
    logging.info("Parameters: %d.", state_lib.param_count(self.state.params))
    _write_config(config, workdir)  # after the restore checked that the checkpoint matches
    if not compile_step:
      return

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
      self.sampler = samples.PeriodicSampler(
          config, self.model, workdir=workdir, mesh=self.mesh,
          param_shardings=self.shardings.ema_params, text_encoder=self.encoder)

  def save(self, step: int, state) -> bool:
    return save_if_good(self.checkpointer, step, state, self.data_iter, self.config)

  def _sample(self, step: int, state, host: dict) -> None:
    paths = self.sampler(step, state.ema_params, batch=host)
    logging.info("Wrote %d sample files for step %d.", len(paths), step)

  def run(self, watcher: Optional[preemption.PreemptionWatcher] = None
          ) -> state_lib.TrainState:
    """Trains to `train.num_steps`; returns the final state (also on preemption). `watcher`:
    one installed before the setup (so a SIGTERM while compiling is honoured too)."""
    t = self.config.train
    hooks = []
    if self.sampler is not None:
      hooks.append(runner_lib.Hook(every=int(t.sample_every), fn=self._sample))
    runner = runner_lib.StepRunner(
        self.compiled, cadence=runner_lib.Cadence.from_config(t),
        checkpointer=self.checkpointer, save=self.save, writer=self.writer,
        throughput=self.throughput,
        put_batch=functools.partial(runner_lib.to_global_batch, mesh=self.mesh,
                                    rules=self.rules),
        hooks=hooks, progress_bar=True)
    batches = runner_lib.prepend(self._pending, self.data_iter)
    self._pending = None
    try:
      runner.run(self.state, batches, watcher or preemption.PreemptionWatcher())
    finally:
      self.state = runner.state  # the latest state, also after an error
      self.checkpointer.close()
    return self.state


def init_from_workdir(config, source_workdir: str, state: state_lib.TrainState, shardings,
                      mesh) -> state_lib.TrainState:
  """`state` (fresh) with params and EMA set from the EMA weights of the newest good checkpoint
  of training workdir `source_workdir` (`train.init_from`), or of an exported stage directory
  (its files checked against the cascade's manifest first): a text-to-image stage of the same
  network inflated (`ModelInterface.inflate`: its weights copied, new temporal layers as the
  identity), or the same model copied. Raises ConfigError when the two models do not match."""
  fam = registry.family(config.model)
  if weights.is_exported_stage(source_workdir):     # e.g. vdm_jax/assets/demo_cascade/base
    source, step, _ = weights.load_stage_params(source_workdir)
  else:
    source, step, _ = ckpt_lib.restore_workdir_ema(source_workdir, mesh=mesh)
  reports = []

  def build(src, fresh):
    params, report = fam.inflate(src, fresh)
    reports.append(report)
    return params, jax.tree.map(jnp.copy, params)     # params and their EMA

  try:
    with jax.set_mesh(mesh):
      params, ema = jax.jit(build, out_shardings=(shardings.params, shardings.ema_params))(
          source, state.params)
  except ValueError as e:
    raise errors.ConfigError(f"train.init_from={source_workdir}: {e}.") from e
  logging.info("Initialized from %s (step %d): %s.", source_workdir, step, reports[0].summary())
  print(f"init_from: {source_workdir} step {step}: {reports[0].summary()}", flush=True)
  return state.replace(params=params, ema_params=ema)


def initialize_workdir(config, workdir: str) -> int:
  """`--mode=inflate`: writes the train state that `train.init_from` gives (a text-to-image
  stage inflated into this video stage) as checkpoint 0 of `workdir`, without training; a
  later `--mode=train` in it resumes from there and `--mode=sample` samples it. Returns 0."""
  if not config.train.get("init_from", ""):
    raise errors.ConfigError("--mode=inflate needs --config.train.init_from=<the text-to-image "
                             "stage's training workdir>.")
  sharding_lib.maybe_initialize_distributed(config)
  metrics_lib.quiet_library_logs()
  with workdir_lock.WorkdirLock(workdir):
    existing = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
      if existing.latest_step() is not None:
        raise errors.ConfigError(f"{workdir} already holds checkpoints (step "
                                 f"{existing.latest_step()}); inflate into a fresh --workdir.")
    finally:
      existing.close()
    trainer = Trainer(config, workdir, compile_step=False)
    try:
      trainer.save(0, trainer.state)
    finally:
      trainer.checkpointer.close()
  print(f"inflate: wrote step 0 to {os.path.join(workdir, 'checkpoints')}; train with "
        f"--mode=train --workdir={workdir}", flush=True)
  return 0


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
