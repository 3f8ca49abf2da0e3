"""The `distill` config section: its checks and the plan of rounds it describes.

Keys (see configs/distill.py):
  mode             'progressive' (Salimans & Ho 2022) | 'guided' (Meng et al. 2022: stage one
                   w-conditioned student of the classifier-free-guided teacher, then progressive)
  start_steps      sampling steps of the teacher (the first round's teacher grid), e.g. 1024, 256
  end_steps        sampling steps of the last student, e.g. 8, 4 or 1
  steps_per_round  optimizer steps of each progressive round
  guided_steps     optimizer steps of guided stage one
  w_min, w_max     guidance weights of guided distillation are drawn from U[w_min, w_max]
  loss_weighting   x-space loss weight (diffusion.loss_weighting names; 'truncated_snr')
  teacher_clip     thresholding of the teacher's x in the first progressive round's DDIM steps
                   (none | static | dynamic; set it to how the teacher is sampled). Later
                   teachers are progressive students, sampled without thresholding, and are
                   distilled without it (`teacher_clip_of`), unless threshold_students.
  threshold_students  False: progressive students reproduce their teachers' thresholded steps
                   and are sampled unthresholded (exact); True: every teacher step is
                   thresholded with teacher_clip and students are sampled with it too
                   (Salimans & Ho's clip_x practice; approximate where thresholding is active)
  use_ema          the next round's teacher (and student init) are the EMA parameters
  cond_drop_prob   conditioning dropout of the distillation batches (both teacher and student)
  teacher_step     step of the teacher checkpoint to load (0 = its latest)
"""
import dataclasses
import math

from vdm_jax import errors as errors_lib
from vdm_jax.diffusion import losses

MODES = ("progressive", "guided")
STAGES = ("guided", "progressive")
CLIPS = ("none", "static", "dynamic")


@dataclasses.dataclass(frozen=True)
class Round:
  """One distillation round.

  Attributes:
    index: 0-based position in the run.
    stage: 'guided' (stage one: w-conditioned student of the guided teacher, same step count)
      or 'progressive' (the student halves the teacher's steps).
    teacher_steps: sampling steps of the teacher (its DDIM grid).
    student_steps: sampling steps of the student after this round.
    train_steps: optimizer steps of the round (a fresh optimizer each round).
  """
  index: int
  stage: str
  teacher_steps: int
  student_steps: int
  train_steps: int

  @property
  def name(self) -> str:
    """Directory name of the round, e.g. '01_progressive_0064'."""
    return f"{self.index:02d}_{self.stage}_{self.student_steps:04d}"

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), name=self.name)


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def check_distill_config(config) -> None:
  """Raises ValueError naming the key and the fix for a `distill` section that cannot work.

  Checked before anything is built or compiled.
  """
  if "distill" not in config:
    raise errors_lib.ConfigError(
        "The config has no `distill` section; use configs/distill.py (or add the "
        "section that vdm_jax/distill/settings.py describes).")
  d = config.distill
  errors = []
  if d.mode not in MODES:
    errors.append(f"distill.mode={d.mode!r} is not one of {MODES}")
  start, end = int(d.start_steps), int(d.end_steps)
  if end < 1:
    errors.append(f"distill.end_steps={end} must be >= 1")
  elif start < end or start % end or not _is_power_of_two(start // end):
    errors.append(f"distill.start_steps={start} must be end_steps={end} times a power of two "
                  "(every round halves the steps), e.g. 256 -> 8 or 1024 -> 4")
  elif d.mode == "progressive" and start == end:
    errors.append(f"distill.start_steps == end_steps == {end}: progressive mode has no round "
                  "to run; lower end_steps")
  if int(d.steps_per_round) < 1:
    errors.append(f"distill.steps_per_round={d.steps_per_round} must be >= 1")
  if d.mode == "guided":
    if int(d.guided_steps) < 1:
      errors.append(f"distill.guided_steps={d.guided_steps} must be >= 1 in guided mode")
    if not 0.0 <= float(d.w_min) <= float(d.w_max) or not math.isfinite(float(d.w_max)):
      errors.append(f"distill.w_min={d.w_min}, w_max={d.w_max}: need 0 <= w_min <= w_max")
    if not config.model.get("guidance_weight_conditioning", False):
      errors.append("distill.mode='guided' trains a student that takes the guidance weight as "
                    "input: set model.guidance_weight_conditioning=True")
    if not (config.model.get("text_cross_attention", False)
            or config.model.get("text_pooled_conditioning", False)):
      errors.append("distill.mode='guided' needs a text-conditioned teacher (classifier-free "
                    "guidance contrasts the text and the null text)")
  if d.teacher_clip not in CLIPS:
    errors.append(f"distill.teacher_clip={d.teacher_clip!r} is not one of {CLIPS}")
  if d.loss_weighting not in losses.WEIGHTINGS:
    errors.append(f"distill.loss_weighting={d.loss_weighting!r} is not one of "
                  + " | ".join(losses.WEIGHTINGS))
  if not 0.0 <= float(d.cond_drop_prob) < 1.0:
    errors.append(f"distill.cond_drop_prob={d.cond_drop_prob} must lie in [0, 1)")
  if int(d.get("teacher_step", 0)) < 0:
    errors.append(f"distill.teacher_step={d.teacher_step} must be >= 0 (0 = latest)")
  if int(config.data.get("images_per_video", 0)):
    errors.append(f"data.images_per_video={config.data.images_per_video}: distillation matches "
                  "the teacher on videos only; set data.images_per_video=0")
  if errors:
    raise errors_lib.ConfigError("Invalid distill config:\n  - " + "\n  - ".join(errors))


def teacher_clip_of(rnd: Round, distill_cfg) -> str:
  """Thresholding of the teacher's x in round `rnd`: distill.teacher_clip when the teacher is
  sampled with it (the trained model, or the guided stage-one student, which reproduces the
  guided output), 'none' when the teacher is itself a progressive student."""
  if rnd.stage != "progressive":
    return "none"
  if distill_cfg.get("threshold_students", False):
    return distill_cfg.teacher_clip
  first = 1 if distill_cfg.mode == "guided" else 0
  return distill_cfg.teacher_clip if rnd.index == first else "none"


def plan_rounds(distill_cfg) -> list[Round]:
  """The rounds of a run: [guided stage one (guided mode)] + progressive rounds N -> N / 2.

  E.g. mode='guided', start_steps=64, end_steps=8: guided(64 -> 64), 64 -> 32, 32 -> 16,
  16 -> 8.
  """
  start, end = int(distill_cfg.start_steps), int(distill_cfg.end_steps)
  rounds = []
  if distill_cfg.mode == "guided":
    rounds.append(Round(0, "guided", start, start, int(distill_cfg.guided_steps)))
  n = start
  while n > end:
    rounds.append(Round(len(rounds), "progressive", n, n // 2, int(distill_cfg.steps_per_round)))
    n //= 2
  return rounds
