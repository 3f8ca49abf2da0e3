"""Distillation objectives of a U-Net stage, and the model_fn of a distilled student.

`make_distill_loss_fn` returns loss_fn(params, teacher, batch, key) where `teacher` is a
`TeacherInputs`-shaped dict {'params': teacher parameters, 'student_steps': int32 [],
'round': int32 []}; both counts are traced, so every progressive round reuses one compiled step.

Conditioning: the batch is mapped onto the teacher's U-Net inputs with
`vdm_jax.train.objective.model_inputs`; a student with model.guidance_weight_conditioning also
gets `guidance_weight` [B], drawn per example from U[distill.w_min, distill.w_max]. In guided
stage one the teacher is guided with the null text (zero embeddings, all-False mask, as the
training's conditioning dropout makes it); in progressive rounds of a w-conditioned student the
teacher (the previous student) gets the same w and runs once per step.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from vdm_jax import diffusion
from vdm_jax.diffusion import distillation
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.models import registry
from vdm_jax.train import inputs
from vdm_jax.train import objective

GUIDANCE_KEY = "guidance_weight"
# Key fold-ins of a distillation loss: one per draw (the round index is folded in first).
_SALTS = dict(loss=0, dropout=1, aug=2, weight=3)


def _flag(model_cfg, key: str) -> bool:
  return bool(model_cfg.get(key, False))


def teacher_model_config(config, stage: str):
  """The `model` section of the teacher of a round of `stage` ('guided' | 'progressive').

  Guided stage one distils a teacher without the guidance-weight input; every other teacher is
  a model of the student's own architecture.
  """
  m = config.model.copy_and_resolve_references()
  if stage == "guided":
    with m.unlocked():
      m.guidance_weight_conditioning = False
  return m


def null_condition(cond: dict) -> dict:
  """The unconditional input of classifier-free guidance: cond with the text replaced by the
  null text (zero embeddings [B, L, D], all-False mask [B, L]); other inputs unchanged."""
  if "text_emb" not in cond:
    raise ValueError("Guided distillation needs a text-conditioned teacher: the batch gives "
                     "the model no text_emb.")
  out = dict(cond)
  out["text_emb"] = jnp.zeros_like(cond["text_emb"])
  if "text_mask" in cond:
    out["text_mask"] = jnp.zeros_like(cond["text_mask"])
  return out


def make_distill_loss_fn(config, *, stage: str, student_model, teacher_model,
                         teacher_clip: str = "none"
                         ) -> Callable[[Any, dict, dict, jax.Array], tuple]:
  """loss_fn(params, teacher, batch, key) -> (loss, aux) of one round of `stage`.

  Args:
    config: the experiment config (sections model, diffusion, distill, train, height).
    stage: 'guided' (stage one: regress onto the guided teacher at continuous t) or
      'progressive' (regress onto the teacher's two DDIM steps on the student grid).
    student_model, teacher_model: Linen modules called as
      model.apply({'params': p}, z, logsnr, **inputs, train=...).
    teacher_clip: thresholding of the teacher's x in its DDIM steps (progressive stage; see
      `settings.teacher_clip_of`).

  The batch holds 'video' [B, T, H, W, C] in [-1, 1] and the conditioning the model reads.
  """
  if stage not in ("guided", "progressive"):
    raise ValueError(f"stage={stage!r} is not 'guided' or 'progressive'")
  d, diff = config.distill, config.diffusion
  schedule = diffusion.schedule_from_config(diff, resolution=config.height)
  noise_fn = noise_lib.noise_fn_from_config(diff)   # the teacher's noise prior
  teacher_cfg = teacher_model_config(config, stage)
  student_w = _flag(config.model, "guidance_weight_conditioning")
  teacher_w = _flag(teacher_cfg, "guidance_weight_conditioning")
  cond_aug = _flag(config.model, "cond_aug_conditioning")
  max_aug_t = float(config.train.get("cond_aug_max_t", 1.0))
  w_min, w_max = float(d.get("w_min", 0.0)), float(d.get("w_max", 0.0))
  if stage == "guided" and not student_w:
    raise ValueError("Guided distillation needs model.guidance_weight_conditioning=True.")

  def loss_fn(params, teacher, batch, key):
    key = jax.random.fold_in(key, teacher["round"])
    keys = {name: jax.random.fold_in(key, salt) for name, salt in _SALTS.items()}
    cond = registry.family(teacher_cfg).model_inputs(batch)
    if cond_aug and "lowres_video" in cond:
      cond["lowres_video"], cond["cond_aug_logsnr"] = objective.augment_lowres(
          cond["lowres_video"], keys["aug"], schedule=schedule, max_t=max_aug_t)
    x = batch["video"].astype(jnp.float32)
    if "lowres" in batch:   # an SR stage diffusing its residual (lowres_residual_scale > 0)
      x = objective.to_residual(config, x, batch["lowres"])
    w = None
    student_cond = cond
    if student_w:
      w = distillation.sample_guidance_weight(keys["weight"], x.shape[0], w_min=w_min,
                                              w_max=w_max)
      student_cond = dict(cond, **{GUIDANCE_KEY: w})

    def student_fn(z, logsnr, c):
      return student_model.apply({"params": params}, z, logsnr, **c, train=True,
                                 rngs={"dropout": keys["dropout"]})

    def teacher_fn(z, logsnr, c):
      return teacher_model.apply({"params": teacher["params"]}, z, logsnr, **c, train=False)

    common = dict(student_fn=student_fn, teacher_fn=teacher_fn, x=x, key=keys["loss"],
                  schedule=schedule, prediction=diff.prediction, weighting=d.loss_weighting,
                  noise_fn=noise_fn)
    if stage == "guided":
      return distillation.guided_distillation_loss(
          cond=cond, uncond=null_condition(cond), student_cond=student_cond,
          guidance_weight=w, **common)
    return distillation.progressive_distillation_loss(
        num_student_steps=teacher["student_steps"], cond=student_cond if teacher_w else cond,
        student_cond=student_cond, clip=teacher_clip, **common)

  return loss_fn


def make_student_model_fn(model, params, *, guidance_weight: Optional[Any] = None,
                          ) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
  """model_fn(z, logsnr, cond) of a (distilled) stage for `vdm_jax.diffusion.sample`.

  A guided-distillation student takes the guidance weight as an input: pass `guidance_weight`
  (a scalar or [B]) here and sample with guidance_weight=0 and no uncond, so that each step is
  ONE network evaluation. `cond` is the dict of the model's other inputs (text_emb, text_mask,
  fps, ...). For a model without the guidance input leave guidance_weight None.
  A progressive student whose teacher steps were thresholded (distill.teacher_clip) is sampled
  with clip='none' (its round config says so).
  """
  def model_fn(z, logsnr, cond):
    kw = dict(cond or {})
    if guidance_weight is not None:
      kw[GUIDANCE_KEY] = jnp.broadcast_to(jnp.asarray(guidance_weight, jnp.float32),
                                          (z.shape[0],))
    return model.apply({"params": params}, z, logsnr, **kw, train=False)

  return model_fn


def init_params_fn(model_cfg, model, *, batch_like: dict, batch_size: int = 1):
  """key -> boxed params of `model` (its config section `model_cfg`), traced on a
  `batch_size` slice of a batch's shapes; adds the guidance weight for a w-conditioned model."""
  def init(key):
    small = {k: jnp.zeros((batch_size,) + tuple(v.shape[1:]), v.dtype)
             for k, v in batch_like.items() if k in inputs.TRAIN_KEYS}
    kw = registry.family(model_cfg).model_inputs(small)
    if _flag(model_cfg, "cond_aug_conditioning") and "lowres_video" in kw:
      kw["cond_aug_logsnr"] = jnp.zeros((batch_size,), jnp.float32)
    if _flag(model_cfg, "guidance_weight_conditioning"):
      kw[GUIDANCE_KEY] = jnp.zeros((batch_size,), jnp.float32)
    x = small["video"].astype(jnp.float32)
    return model.init({"params": key}, x, jnp.zeros((batch_size,), jnp.float32), **kw)["params"]

  return init
