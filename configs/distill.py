"""Progressive / guided distillation of a trained stage (vdm_jax/distill).

    python -m vdm_jax.main --mode=distill --config=configs/distill.py:base=tiny,mode=guided \
        --workdir=/tmp/tiny_distill --teacher_workdir=/tmp/tiny

Variant keys (comma separated):
  base   tiny | default | demo | dit: the config the teacher was trained with (its model
         section is reused); demo = the base stage of configs/demo.py (the `make demo`
         cascade); dit = configs/dit.py (the video transformer on the demo's base stage)
  mode   progressive | guided
  start  the teacher's sampling steps (the first round's teacher grid), e.g. 1024 or 256
  end    the last student's sampling steps, e.g. 8, 4 or 1
Every other key can be overridden on the command line (--config.distill.steps_per_round=...).
The `train` section drives each round's optimizer (a fresh one per round, its schedule over
the round's steps); checkpoints, logging and sharding are the training ones.
"""
import ml_collections

from configs import default
from configs import demo
from configs import dit
from configs import tiny
from vdm_jax import config_utils


def add_distill_section(c, *, mode: str = "progressive", start: int = 256, end: int = 8):
  """Adds the `distill` section (keys documented in vdm_jax/distill/settings.py) to config c."""
  d = c.distill = ml_collections.ConfigDict()
  d.mode = mode                   # progressive | guided
  d.start_steps = start           # teacher's sampling steps in the first round
  d.end_steps = end               # the last student's sampling steps
  d.steps_per_round = 2000        # optimizer steps per progressive round (fresh optimizer)
  d.guided_steps = 2000           # optimizer steps of guided stage one
  d.w_min = 0.0                   # guidance weights drawn from U[w_min, w_max] (guided)
  d.w_max = 4.0
  d.loss_weighting = "truncated_snr"  # max(SNR, 1) on the x-space error
  d.teacher_clip = c.sample.clip  # thresholding of the teacher's x in its DDIM steps (its
  #                                 students are then sampled with clip='none')
  d.threshold_students = False    # True: threshold every teacher and sample students with it
  d.use_ema = True                # teachers (and student inits) are EMA parameters
  d.cond_drop_prob = 0.0          # conditioning dropout of distillation batches
  d.teacher_step = 0              # teacher checkpoint step; 0 = the latest
  if mode == "guided":
    c.model.guidance_weight_conditioning = True
  return c


def get_config(arg=None):
  args = config_utils.parse_variant(arg)
  unknown = set(args) - {"base", "mode", "start", "end"}
  if unknown:
    raise ValueError(f"configs/distill.py: unknown variant keys {sorted(unknown)}; use base=, "
                     "mode=, start=, end=")
  base = args.get("base", "tiny")
  if base not in ("tiny", "default", "demo", "dit"):
    raise ValueError(f"configs/distill.py: base={base!r} is not tiny, default, demo or dit")
  if base == "demo":
    c = demo.get_config().cascade.stages.base
  elif base == "dit":
    c = dit.get_config()
  else:
    c = (tiny if base == "tiny" else default).get_config()
  return distill_config(c, mode=args.get("mode", "progressive"),
                        start=int(args.get("start", 256)), end=int(args.get("end", 8)),
                        small=base != "default")


def distill_config(c, *, mode: str, start: int, end: int, small: bool):
  """Stage config `c` (modified in place) made into a distillation config: the `distill`
  section, and a `train` section for the rounds; `small` = a CPU-scale model."""
  add_distill_section(c, mode=mode, start=start, end=end)
  # Salimans & Ho use a constant learning rate per round; the EMA must follow a short round.
  t = c.train
  t.lr_schedule = "constant"
  t.warmup_steps = 0
  t.lr = 3e-4 if small else 1e-4
  t.ema_decay = 0.99 if small else 0.999
  t.sample_every = 0
  if small:
    c.distill.steps_per_round = 300
    c.distill.guided_steps = 300
    t.checkpoint_every = 100
    t.log_every = 25
  c.sample.num_steps = c.distill.end_steps
  # The student learns the teacher's deterministic DDIM steps: it samples that way, whatever
  # sampler the teacher's config samples with.
  c.sample.sampler = "ddim"
  c.sample.eta = 0.0
  return c
