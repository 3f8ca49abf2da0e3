"""The round loop of progressive (and guided) distillation.

Every round (`settings.plan_rounds`) trains a fresh student, initialized from its teacher, with
a fresh optimizer, for `train_steps` sharded distillation steps; the next round's teacher is
that student (its EMA parameters when distill.use_ema). Each round is its own workdir-like
directory `workdir/rounds/<NN>_<stage>_<steps>/` holding config.json, metrics.jsonl and orbax
checkpoints whose config item records the round (distill.round_*) and sets sample.num_steps to
the student's step count, so `--mode=sample` on a round directory samples with the right grid.
`workdir/rounds.json` lists the finished rounds. A rerun resumes: finished rounds are loaded,
an interrupted one continues from its latest checkpoint (SIGTERM saves one and stops). A
round's steps are run by `vdm_jax.train.runner.StepRunner`, as training's are.
"""
import functools
import json
import os
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import numpy as np

from vdm_jax.distill import objective as dobjective
from vdm_jax.distill import settings
from vdm_jax.distill import state as dstate
from vdm_jax.distill import step as dstep
from vdm_jax.models import registry
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import inputs
from vdm_jax.train import loop
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import runner as runner_lib
from vdm_jax.train import state as state_lib

MANIFEST = "rounds.json"


class Preempted(RuntimeError):
  """A signal stopped the run; the interrupted round's checkpoint was saved."""


def _raise_preempted(round_name: str, step: int) -> None:
  raise Preempted(f"Stopped by a signal in round {round_name} at step {step}; the "
                  "checkpoint is saved and a rerun resumes there.")


def _round_scalars(rows: list[dict]) -> dict:
  """A round's logged scalars (before the rates): the mean finite loss of the window (NaN if
  none) and the latest step's gradient norm, learning rate and skipped-step count."""
  finite = [r["loss"] for r in rows if np.isfinite(r["loss"])]
  last = rows[-1]
  return dict(loss=float(np.mean(finite)) if finite else float("nan"),
              grad_norm=last["grad_norm"], lr=last["lr"],
              nonfinite_count=last["nonfinite_count"])


def round_config(config, rnd: settings.Round):
  """The config a round's checkpoints carry: distill.round_* fields, train.num_steps = the
  round's optimizer steps, sample.num_steps = the student's sampling steps, and
  sample.clip = 'none' after a progressive round (the student's one step reproduces its
  teacher's two steps, thresholded as that teacher is sampled; thresholding the student's x
  again would move it off them), or distill.teacher_clip with distill.threshold_students.
  distill.round_teacher_clip records the teacher's."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.distill.round_index = rnd.index
    c.distill.round_stage = rnd.stage
    c.distill.round_teacher_steps = rnd.teacher_steps
    c.distill.round_student_steps = rnd.student_steps
    c.train.num_steps = rnd.train_steps
    c.sample.num_steps = rnd.student_steps
    c.distill.round_teacher_clip = settings.teacher_clip_of(rnd, config.distill)
    if rnd.stage == "progressive":
      c.sample.clip = (config.distill.teacher_clip
                       if config.distill.get("threshold_students", False) else "none")
  return c


def read_manifest(workdir: str) -> list[dict]:
  """The finished rounds recorded in `workdir/rounds.json` (empty if none)."""
  path = os.path.join(workdir, MANIFEST)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return json.load(f)["rounds"]


class DistillationRun:
  """Runs all rounds of `config.distill` in `workdir` from given teacher parameters.

  Args:
    config: experiment config with a `distill` section.
    workdir: output directory.
    student_model, teacher_model: Linen modules (the first teacher may lack the guidance input).
    teacher_params: the first teacher's parameters, on `teacher_param_shardings`.
    make_batches: round -> iterator of host batches (dicts of numpy arrays [b, ...]); a grain
      iterator (with get_state) is checkpointed with the round.
    mesh, rules: the device mesh and logical axis rules.
  """

  def __init__(self, config, workdir: str, *, student_model, teacher_model, teacher_params: Any,
               teacher_param_shardings: Any, make_batches: Callable[[settings.Round], Iterator],
               mesh, rules):
    settings.check_distill_config(config)
    loop.check_loop_config(config)
    self.config, self.workdir = config, workdir
    self.student_model, self.teacher_model = student_model, teacher_model
    self.teacher_params, self.teacher_param_shardings = teacher_params, teacher_param_shardings
    self.make_batches, self.mesh, self.rules = make_batches, mesh, rules
    self.rounds = settings.plan_rounds(config.distill)
    self._steps = {}
    self._earlier = {}

  def _write_json(self, path: str, payload: Any) -> None:
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
      os.replace(path + ".tmp", path)

  def _step_fn(self, rnd, rcfg, teacher_model, shardings, teacher_shardings, batch_spec):
    """The compiled step of a round, shared by rounds of the same stage and length."""
    clip = rcfg.distill.round_teacher_clip
    key = (rnd.stage, rnd.train_steps, teacher_model is self.student_model, clip)
    if key not in self._steps:
      t = rcfg.train
      loss_fn = dobjective.make_distill_loss_fn(rcfg, stage=rnd.stage,
                                                student_model=self.student_model,
                                                teacher_model=teacher_model, teacher_clip=clip)
      self._steps[key] = dstep.make_distill_step(
          loss_fn=loss_fn, tx=optimizer_lib.make_optimizer(t, rcfg.model),
          lr_schedule=optimizer_lib.learning_rate_schedule(t), train_cfg=t,
          seed=int(rcfg.seed), cond_drop_prob=float(rcfg.distill.cond_drop_prob),
          mesh=self.mesh, rules=self.rules, state_shardings=shardings,
          teacher_param_shardings=teacher_shardings, batch_like=batch_spec,
          constrain_activations=bool(rcfg.sharding.get("constrain_activations", False)))
    return self._steps[key]

  def run(self) -> tuple[list[dict], state_lib.TrainState]:
    """Runs (or resumes) every round; returns (the round records, the last student state)."""
    teacher_params, teacher_shardings = self.teacher_params, self.teacher_param_shardings
    teacher_model, records, state = self.teacher_model, [], None
    self._earlier = {r.get("name"): r for r in read_manifest(self.workdir)}
    use_ema = bool(self.config.distill.use_ema)
    for rnd in self.rounds:
      record, state, shardings = self._run_round(rnd, teacher_model, teacher_params,
                                                 teacher_shardings)
      records.append(record)
      self._write_json(os.path.join(self.workdir, MANIFEST),
                       {"rounds": records, "plan": [r.to_dict() for r in self.rounds]})
      teacher_model = self.student_model
      teacher_params = state.ema_params if use_ema else state.params
      teacher_shardings = shardings.ema_params if use_ema else shardings.params
    return records, state

  def _run_round(self, rnd: settings.Round, teacher_model, teacher_params, teacher_shardings):
    """Trains (or loads) one round; returns (its record, its final state, state shardings)."""
    rcfg = round_config(self.config, rnd)
    t = rcfg.train
    round_dir = os.path.join(self.workdir, "rounds", rnd.name)
    self._write_json(os.path.join(round_dir, "config.json"), ckpt_lib.config_to_dict(rcfg))
    tx = optimizer_lib.make_optimizer(t, rcfg.model)
    data_iter = self.make_batches(rnd)
    checkpointable = hasattr(data_iter, "get_state")
    first = next(data_iter)
    init_fn = registry.family(rcfg.model).init_fn(self.student_model,
                                        batch_like=inputs.select(first))
    key = jax.random.fold_in(jax.random.key(int(rcfg.seed)), rnd.index)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(round_dir, "checkpoints"),
                                         keep_last=int(t.keep_last), keep_every=0,
                                         async_save=bool(t.get("async_checkpointing", True)),
                                         quarantine=True)
    if checkpointer.latest_step() is None:
      state, shardings = dstate.init_student_state(
          source_params=teacher_params, source_shardings=teacher_shardings,
          init_params_fn=init_fn, key=key, tx=tx, mesh=self.mesh, rules=self.rules)
    else:
      target, shardings = state_lib.abstract_train_state(
          init_params_fn=init_fn, key=key, tx=tx, mesh=self.mesh, rules=self.rules)
      state, _ = checkpointer.restore_latest(
          target_state=target, data_iter=data_iter if checkpointable else None, config=rcfg,
          fallback=bool(t.get("checkpoint_fallback", True)))
      first = None if checkpointable else first
    step = runner_lib.state_step(state)
    start_step, start_time, last_loss = step, time.time(), None
    logging.info("Round %s: teacher %d steps -> student %d steps, optimizer steps %d/%d.",
                 rnd.name, rnd.teacher_steps, rnd.student_steps, step, rnd.train_steps)
    try:
      if step < rnd.train_steps:
        state, last_loss = self._train(
            rnd, rcfg, state_and_shardings=(state, shardings),
            teacher=(teacher_model, teacher_params, teacher_shardings), data_iter=data_iter,
            first=first, checkpointer=checkpointer, checkpointable=checkpointable,
            round_dir=round_dir)
      else:
        last_loss = self._earlier.get(rnd.name, {}).get("final_loss")
      checkpointer.wait()
    finally:
      checkpointer.close()
    record = dict(rnd.to_dict(), directory=round_dir, checkpoint_step=rnd.train_steps,
                  steps_run=rnd.train_steps - start_step, final_loss=last_loss,
                  wall_s=round(time.time() - start_time, 2))
    return record, state, shardings

  def _train(self, rnd, rcfg, *, state_and_shardings, teacher, data_iter, first, checkpointer,
             checkpointable, round_dir):
    """The optimizer steps of one round; returns (the final state, the mean loss of the last
    logging window). Raises Preempted after a signal (its checkpoint saved)."""
    t = rcfg.train
    state, shardings = state_and_shardings
    teacher_model, teacher_params, teacher_shardings = teacher
    host = first if first is not None else next(data_iter)
    batch_spec = inputs.global_batch_spec(host, self.mesh, self.rules)
    step_fn = self._step_fn(rnd, rcfg, teacher_model, shardings, teacher_shardings, batch_spec)
    teacher_in = dstep.teacher_inputs(teacher_params, student_steps=rnd.student_steps,
                                      round_index=rnd.index, mesh=self.mesh)
    iter_state = data_iter if checkpointable else None
    runner = runner_lib.StepRunner(
        lambda s, batch: step_fn(s, teacher_in, batch),
        cadence=runner_lib.Cadence.from_config(t), checkpointer=checkpointer,
        save=lambda step, s: loop.save_if_good(checkpointer, step, s, iter_state, rcfg),
        writer=metrics_lib.MetricsWriter(round_dir),
        throughput=metrics_lib.Throughput(global_batch=int(t.batch_size),
                                          flops_per_device_step=None,
                                          peak_flops_per_device=None),
        put_batch=functools.partial(runner_lib.to_global_batch, mesh=self.mesh,
                                    rules=self.rules),
        summarize=_round_scalars, log_prefix=f"[{rnd.name}] ",
        on_preempted=functools.partial(_raise_preempted, rnd.name))
    result = runner.run(state, runner_lib.prepend(host, data_iter))
    return result.state, (result.last_scalars or {}).get("loss")
