"""`run_distillation(config, workdir, teacher_workdir)`: what `--mode=distill` runs.

The teacher is the stage trained by `--mode=train` in `teacher_workdir`: its config.json (for
the optimizer-state layout) and the latest (or `distill.teacher_step`) orbax checkpoint in
`teacher_workdir/checkpoints/`, whose EMA parameters (distill.use_ema) are the first teacher.
Its `model` section must equal the distill config's, apart from
model.guidance_weight_conditioning, which guided distillation adds to the student. A
distillation round directory (`workdir/rounds/<round>/`) is itself a valid teacher_workdir.
"""
import dataclasses
import os

from absl import logging

from vdm_jax import errors
from vdm_jax import sharding as sharding_lib
from vdm_jax.distill import objective as dobjective
from vdm_jax.distill import rounds as rounds_lib
from vdm_jax.distill import settings
from vdm_jax.distill import state as dstate
from vdm_jax.models import registry
from vdm_jax.train import inputs
from vdm_jax.train import loop
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import workdir_lock


@dataclasses.dataclass
class DistillResult:
  """What a distillation run produced.

  Attributes:
    rounds: one record per round (name, stage, teacher_steps, student_steps, train_steps,
      directory, final_loss, wall_s, ...), as written to workdir/rounds.json.
    state: the last student's TrainState.
    teacher_step: the teacher checkpoint step that was loaded.
  """
  rounds: list
  state: object
  teacher_step: int


def _round_batches(config, store):
  """round -> the grain iterator of this process's batches (shuffle seed offset by round)."""
  def make(rnd: settings.Round):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.data.shuffle_seed = int(config.data.shuffle_seed) + rnd.index
    return inputs.make_data_iterator(c, store)
  return make


def run_distillation(config, workdir: str, teacher_workdir: str) -> DistillResult:
  """Distils the stage trained in `teacher_workdir` into `workdir` as `config.distill` says.

  Args:
    config: the experiment config (e.g. configs/distill.py) with a `distill` section; its
      model section is the student's.
    workdir: output directory (rounds/<NN>_<stage>_<steps>/ per round, rounds.json); a rerun
      resumes.
    teacher_workdir: the --workdir of the teacher's training run.

  Returns:
    A DistillResult. Raises ValueError for a bad config (before anything is compiled),
    FileNotFoundError when teacher_workdir is not a training workdir, and
    `vdm_jax.train.checkpoint.CheckpointError` when its checkpoint is of another model.
  """
  settings.check_distill_config(config)
  loop.check_loop_config(config)
  if os.path.abspath(workdir) == os.path.abspath(teacher_workdir):
    raise errors.ConfigError(
        "--workdir must differ from the teacher's workdir (distillation writes "
        "its own rounds and never touches the teacher).")
  dstate.saved_train_config(teacher_workdir)  # fails early with what to pass instead
  sharding_lib.maybe_initialize_distributed(config)
  metrics_lib.quiet_library_logs()
  mesh = sharding_lib.create_mesh(config.sharding)
  rules = sharding_lib.logical_rules(config.sharding)
  sharding_lib.check_batch_divisible(int(config.train.batch_size), mesh, rules)

  _, store = inputs.text_conditioning(config)
  make_batches = _round_batches(config, store)
  batch_like = inputs.select(next(make_batches(settings.plan_rounds(config.distill)[0])))

  first_stage = settings.plan_rounds(config.distill)[0].stage
  teacher_cfg = config.copy_and_resolve_references()
  with teacher_cfg.unlocked():
    teacher_cfg.model = dobjective.teacher_model_config(config, first_stage)
  student_model = registry.family(config.model).module()
  teacher_model = (registry.family(teacher_cfg.model).module() if first_stage == "guided"
                   else student_model)  # the same module: one compiled step for all rounds
  teacher_init = registry.family(teacher_cfg.model).init_fn(teacher_model,
                                           batch_like=batch_like)
  params, shardings, step = dstate.restore_params(
      workdir=teacher_workdir, config=teacher_cfg, init_params_fn=teacher_init, mesh=mesh,
      rules=rules, step=int(config.distill.get("teacher_step", 0)),
      use_ema=bool(config.distill.use_ema))
  logging.info("Teacher: step %d of %s (%s parameters).", step, teacher_workdir,
               "EMA" if config.distill.use_ema else "raw")
  with workdir_lock.WorkdirLock(workdir):
    run = rounds_lib.DistillationRun(
        config, workdir, student_model=student_model, teacher_model=teacher_model,
        teacher_params=params, teacher_param_shardings=shardings, make_batches=make_batches,
        mesh=mesh, rules=rules)
    records, state = run.run()
  return DistillResult(rounds=records, state=state, teacher_step=step)
