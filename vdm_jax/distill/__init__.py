"""Progressive distillation (Salimans & Ho 2022) and guided distillation (Meng et al. 2022) of a
trained stage down to a few sampling steps.

  run_distillation(config, workdir, teacher_workdir)   what `--mode=distill` runs (run.py)
  make_student_model_fn(model, params, guidance_weight=w)
                                   model_fn of a distilled stage for vdm_jax.diffusion.sample
  settings      the `distill` config section: checks and the plan of rounds
  objective     the distillation losses of a U-Net stage
  step          the sharded distillation step (train_step with the teacher as an argument)
  state         teacher restore, student init from the teacher, checkpoint config reader
  rounds        the round loop (checkpoint per round, resume)
The math (targets, losses) is in vdm_jax/diffusion/distillation.py.
"""
from vdm_jax.distill.objective import make_student_model_fn
from vdm_jax.distill.rounds import DistillationRun, read_manifest
from vdm_jax.distill.run import DistillResult, run_distillation
from vdm_jax.distill.settings import Round, check_distill_config, plan_rounds
