"""Distillation targets: progressive distillation (Salimans & Ho 2022) and guided distillation
(Meng et al. 2022), as pure functions of a teacher `model_fn`.

Progressive distillation (Salimans & Ho 2022, Algorithm 2). A student sampled with N DDIM steps
(grid t_i = i / N) learns to take, in ONE step from t to s = t - 1/N, the two steps that the
teacher takes on the 2N-step grid: t -> t - 1/(2N) -> s. With z_s'' the teacher's two-step
result, the student's x is the one whose deterministic DDIM step lands exactly there:

  z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t
  =>  x_target = (z_s'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).

At the final step (s = 0) the sampler returns its x prediction instead of stepping (see
`samplers.sample`), so there the target is what the teacher returns after its two steps: the
teacher's x prediction at t - 1/(2N). The loss is an x-space MSE with a truncated-SNR weight
max(SNR_t, 1) ('truncated_snr' of `losses.loss_weight`), evaluated in the student's own
parameterization as `losses.diffusion_loss` does.

Guided distillation, stage one (Meng et al. 2022): a student that takes the guidance weight w
as an input learns the classifier-free-guided teacher output
  x_w = (1 + w) x_cond - w x_uncond
for w drawn from [w_min, w_max] and continuous t; sampling it then costs one network evaluation
per step instead of two. Stage two distils that student progressively (with w as conditioning).

model_fn conventions as in `vdm_jax.diffusion`: model_fn(z [B, ...], logsnr [B], cond) -> output
[B, ...] in the `prediction` parameterization.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import guidance as guid
from vdm_jax.diffusion import losses
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion import samplers
from vdm_jax.diffusion.schedules import alpha_sigma, broadcast_logsnr, q_sample

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def ddim_x_target(*, z_t: jax.Array, z_s: jax.Array, logsnr_t: jax.Array,
                  logsnr_s: jax.Array) -> jax.Array:
  """The x whose deterministic DDIM step from z_t (at logsnr_t) lands exactly on z_s.

  z_t, z_s: [B, ...]; logsnr_t < logsnr_s: [B]. The ratio sigma_s / sigma_t is formed in log
  space (log sigma^2 = -softplus(logsnr)), never as a quotient of two small numbers.
  """
  if z_t.shape != z_s.shape:
    raise ValueError(f"z_t and z_s must have the same shape, got {z_t.shape} and {z_s.shape}")
  lt = broadcast_logsnr(logsnr_t, z_t)
  ls = broadcast_logsnr(logsnr_s, z_t)
  alpha_t, _ = alpha_sigma(lt)
  alpha_s, _ = alpha_sigma(ls)
  stdv_frac = jnp.exp(0.5 * (jax.nn.softplus(lt) - jax.nn.softplus(ls)))  # sigma_s / sigma_t
  return (z_s - stdv_frac * z_t) / (alpha_s - stdv_frac * alpha_t)


def teacher_x_and_eps(*, model_fn: ModelFn, z: jax.Array, logsnr: jax.Array, prediction: str,
                      cond: Any = None, uncond: Any = None, guidance_weight: Any = 0.0,
                      clip: str = "none", dynamic_percentile: Any = 0.995
                      ) -> Tuple[jax.Array, jax.Array]:
  """The teacher's (guided, thresholded) x and eps at z [B, ...], logsnr [B], in float32."""
  x, eps = guid.predict_x_and_eps(
      model_fn=model_fn, z=z, logsnr=logsnr, prediction=prediction, cond=cond, uncond=uncond,
      guidance_weight=guidance_weight, clip=clip, dynamic_percentile=dynamic_percentile)
  return x.astype(jnp.float32), eps.astype(jnp.float32)


def teacher_two_steps(*, model_fn: ModelFn, z_t: jax.Array, logsnr_t: jax.Array,
                      logsnr_mid: jax.Array, logsnr_s: jax.Array, prediction: str,
                      cond: Any = None, uncond: Any = None, guidance_weight: Any = 0.0,
                      clip: str = "none", dynamic_percentile: Any = 0.995
                      ) -> Tuple[jax.Array, jax.Array]:
  """Two deterministic teacher DDIM steps t -> mid -> s from z_t [B, ...].

  Returns (z_s'' [B, ...], the teacher's x prediction at mid [B, ...]); the latter is what the
  sampler returns when s is the end of the grid.
  """
  kw = dict(model_fn=model_fn, prediction=prediction, cond=cond, uncond=uncond,
            guidance_weight=guidance_weight, clip=clip, dynamic_percentile=dynamic_percentile)
  z_t = z_t.astype(jnp.float32)
  x_t, eps_t = teacher_x_and_eps(z=z_t, logsnr=logsnr_t, **kw)
  z_mid = samplers.ddim_step(z_t=z_t, x_pred=x_t, eps_pred=eps_t, logsnr_t=logsnr_t,
                             logsnr_s=logsnr_mid)
  x_mid, eps_mid = teacher_x_and_eps(z=z_mid, logsnr=logsnr_mid, **kw)
  z_s = samplers.ddim_step(z_t=z_mid, x_pred=x_mid, eps_pred=eps_mid, logsnr_t=logsnr_mid,
                           logsnr_s=logsnr_s)
  return z_s, x_mid


def student_step_times(t: jax.Array, num_student_steps: Any) -> Tuple[jax.Array, jax.Array]:
  """(mid, s) = (t - 1/(2N), t - 1/N) for student-grid times t [B] (N may be traced).

  Clamped at 0 against rounding; t must lie on the grid {1/N, ..., 1}.
  """
  n = jnp.asarray(num_student_steps, jnp.float32)
  mid = jnp.maximum(t - 0.5 / n, 0.0)
  s = jnp.maximum(t - 1.0 / n, 0.0)
  return mid, s


def progressive_target(*, teacher_fn: ModelFn, z_t: jax.Array, t: jax.Array,
                       num_student_steps: Any, schedule: Callable[[jax.Array], jax.Array],
                       prediction: str, cond: Any = None, uncond: Any = None,
                       guidance_weight: Any = 0.0, clip: str = "none",
                       dynamic_percentile: Any = 0.995) -> Dict[str, jax.Array]:
  """The progressive-distillation target at z_t [B, ...] and student-grid times t [B].

  Args:
    teacher_fn: the teacher's model_fn (sampled with 2N steps).
    z_t: noisy inputs [B, ...].
    t: times [B] on the student grid {1/N, ..., N/N}.
    num_student_steps: N, the student's step count (a Python int or a traced int32 []).
    schedule: t -> logsnr.
    prediction: the teacher's parameterization.
    cond, uncond, guidance_weight: the teacher's conditioning and classifier-free guidance
      (weight a scalar or [B]; 0 = the conditional model, one call per step).
    clip, dynamic_percentile: thresholding of the teacher's x predictions.

  Returns:
    {'x': the target x [B, ...], 'eps': the eps it implies at z_t [B, ...],
     'z_s': the teacher's two-step result [B, ...], 'logsnr': logsnr(t) [B],
     'logsnr_s': logsnr(t - 1/N) [B], 'is_final': bool [B] (t - 1/N == 0)}.
  """
  mid_t, s_t = student_step_times(t, num_student_steps)
  logsnr_t, logsnr_mid, logsnr_s = schedule(t), schedule(mid_t), schedule(s_t)
  z_t = z_t.astype(jnp.float32)
  z_s, x_mid = teacher_two_steps(
      model_fn=teacher_fn, z_t=z_t, logsnr_t=logsnr_t, logsnr_mid=logsnr_mid,
      logsnr_s=logsnr_s, prediction=prediction, cond=cond, uncond=uncond,
      guidance_weight=guidance_weight, clip=clip, dynamic_percentile=dynamic_percentile)
  x_step = ddim_x_target(z_t=z_t, z_s=z_s, logsnr_t=logsnr_t, logsnr_s=logsnr_s)
  is_final = s_t <= 0.0
  x = jnp.where(broadcast_logsnr(is_final, z_t), x_mid, x_step)
  eps = param.predict_eps_from_x(z=z_t, x=x, logsnr=logsnr_t)
  return {"x": x, "eps": eps, "z_s": z_s, "logsnr": logsnr_t, "logsnr_s": logsnr_s,
          "is_final": is_final}


def guided_teacher_x(*, teacher_fn: ModelFn, z: jax.Array, logsnr: jax.Array, prediction: str,
                     cond: Any, uncond: Any, guidance_weight: Any) -> jax.Array:
  """The classifier-free-guided teacher's x = (1 + w) x_cond - w x_uncond at z [B, ...].

  guidance_weight: a scalar or per-example [B]. No thresholding: stage one reproduces the
  guided output itself, and sampling the student applies the same thresholding as the teacher.
  """
  out = guid.guided_model_output(model_fn=teacher_fn, z=z, logsnr=logsnr, cond=cond,
                                 uncond=uncond, weight=guidance_weight)
  x, _ = param.to_x_and_eps(prediction=prediction, model_output=out.astype(jnp.float32),
                            z=z.astype(jnp.float32), logsnr=logsnr)
  return x


def sample_guidance_weight(key: jax.Array, batch_size: int, *, w_min: float,
                           w_max: float) -> jax.Array:
  """Per-example guidance weights w ~ U[w_min, w_max] (float32 [B])."""
  if not 0.0 <= w_min <= w_max:
    raise ValueError(f"guidance weight range [{w_min}, {w_max}] must satisfy 0 <= w_min <= "
                     "w_max (set distill.w_min / distill.w_max)")
  return jax.random.uniform(key, (batch_size,), jnp.float32, w_min, w_max)


def _x_space_loss(*, student_out: jax.Array, x_target: jax.Array, z: jax.Array,
                  logsnr: jax.Array, prediction: str, weighting: str,
                  example_weight: Optional[jax.Array]):
  """Weighted x-space MSE evaluated in the student's own parameterization (see losses.py)."""
  if student_out.shape != z.shape:
    raise ValueError(f"student returned shape {student_out.shape}; expected {z.shape}")
  x_target = jax.lax.stop_gradient(x_target.astype(jnp.float32))
  eps_target = param.predict_eps_from_x(z=z, x=x_target, logsnr=logsnr)
  target = param.from_x_and_eps(prediction=prediction, x=x_target, eps=eps_target,
                                logsnr=logsnr)
  err = jnp.square(student_out.astype(jnp.float32) - target)
  own_mse = jnp.mean(err.reshape(err.shape[0], -1), axis=1)  # [B]
  log_own = losses.log_loss_weight(logsnr, "constant", prediction=prediction)
  log_w = losses.log_loss_weight(logsnr, weighting, prediction=prediction)
  per_example = own_mse * jnp.exp(log_w - log_own)
  aux = {"loss_per_example": per_example, "x_mse": own_mse * jnp.exp(-log_own),
         "weight": jnp.exp(log_w), "logsnr": logsnr}
  return losses.weighted_mean(per_example, example_weight), aux


def _noisy(x: jax.Array, key: jax.Array, t: jax.Array, schedule,
           noise_fn: Optional[noise_lib.NoiseFn] = None) -> Tuple[jax.Array, jax.Array]:
  logsnr = schedule(t)
  eps = noise_lib.draw(noise_fn, key, x.shape, jnp.float32)
  return q_sample(x=x.astype(jnp.float32), eps=eps, logsnr=logsnr), logsnr


def progressive_distillation_loss(
    *, student_fn: ModelFn, teacher_fn: ModelFn, x: jax.Array, key: jax.Array,
    num_student_steps: Any, schedule: Callable[[jax.Array], jax.Array], prediction: str = "v",
    weighting: str = "truncated_snr", cond: Any = None, student_cond: Any = None,
    uncond: Any = None, guidance_weight: Any = 0.0, clip: str = "none",
    dynamic_percentile: Any = 0.995, example_weight: Optional[jax.Array] = None,
    noise_fn: Optional[noise_lib.NoiseFn] = None):
  """Progressive-distillation loss of one batch (Salimans & Ho 2022, Algorithm 2).

  Draws t uniformly on the student grid {1/N, ..., 1} and z_t = alpha_t x + sigma_t eps, takes
  the teacher's two DDIM steps (`progressive_target`) and regresses the student onto the x
  that makes its one step land there, with x-space weight `weighting` (truncated SNR).

  Args:
    student_fn, teacher_fn: model_fns; both in the `prediction` parameterization.
    x: clean data [B, ...].
    key: PRNG key (time and noise draws).
    num_student_steps: N (Python int or traced int32 []).
    cond: the teacher's conditioning; student_cond: the student's (default: cond), e.g. with the
      guidance weight added for guided students.
    uncond, guidance_weight: classifier-free guidance of the teacher (default none).
    clip: thresholding of the teacher's x predictions.
    example_weight: optional [B] weights.
    noise_fn: the noise of z_t (the teacher's noise prior; default i.i.d. normals).

  Returns:
    (loss, aux) with aux {'loss_per_example', 'x_mse', 'weight', 'logsnr', 't'} all [B].
  """
  losses.check_weighting(weighting)
  param.check_prediction(prediction)
  t_key, eps_key = jax.random.split(key)
  batch = x.shape[0]
  n = jnp.asarray(num_student_steps, jnp.int32)
  t = (jax.random.randint(t_key, (batch,), 0, n) + 1).astype(jnp.float32) / n.astype(
      jnp.float32)
  z_t, _ = _noisy(x, eps_key, t, schedule, noise_fn)
  target = progressive_target(
      teacher_fn=teacher_fn, z_t=z_t, t=t, num_student_steps=n, schedule=schedule,
      prediction=prediction, cond=cond, uncond=uncond, guidance_weight=guidance_weight,
      clip=clip, dynamic_percentile=dynamic_percentile)
  logsnr = target["logsnr"]
  out = student_fn(z_t, logsnr, cond if student_cond is None else student_cond)
  loss, aux = _x_space_loss(student_out=out, x_target=target["x"], z=z_t, logsnr=logsnr,
                            prediction=prediction, weighting=weighting,
                            example_weight=example_weight)
  aux["t"] = t
  return loss, aux


def guided_distillation_loss(
    *, student_fn: ModelFn, teacher_fn: ModelFn, x: jax.Array, key: jax.Array, cond: Any,
    uncond: Any, student_cond: Any, guidance_weight: jax.Array,
    schedule: Callable[[jax.Array], jax.Array], prediction: str = "v",
    weighting: str = "truncated_snr", example_weight: Optional[jax.Array] = None,
    noise_fn: Optional[noise_lib.NoiseFn] = None):
  """Guided distillation stage one (Meng et al. 2022): the w-conditioned student regresses
  onto the classifier-free-guided teacher at t ~ U[0, 1].

  Args:
    student_fn, teacher_fn: model_fns in the `prediction` parameterization.
    x: clean data [B, ...]; key: PRNG key (time and noise draws).
    cond, uncond: the teacher's conditional and unconditional inputs (pytrees, leading dim B).
    student_cond: the student's input, which carries the same w (e.g. cond + guidance_weight).
    guidance_weight: w [B] of each example (see `sample_guidance_weight`).
    weighting: x-space loss weight ('truncated_snr' = max(SNR, 1)).
    noise_fn: the noise of z (the teacher's noise prior; default i.i.d. normals).

  Returns:
    (loss, aux) with aux {'loss_per_example', 'x_mse', 'weight', 'logsnr', 't'} all [B].
  """
  losses.check_weighting(weighting)
  param.check_prediction(prediction)
  t_key, eps_key = jax.random.split(key)
  t = losses.sample_t(t_key, x.shape[0])
  z, logsnr = _noisy(x, eps_key, t, schedule, noise_fn)
  x_target = guided_teacher_x(teacher_fn=teacher_fn, z=z, logsnr=logsnr, prediction=prediction,
                              cond=cond, uncond=uncond, guidance_weight=guidance_weight)
  out = student_fn(z, logsnr, student_cond)
  loss, aux = _x_space_loss(student_out=out, x_target=x_target, z=z, logsnr=logsnr,
                            prediction=prediction, weighting=weighting,
                            example_weight=example_weight)
  aux["t"] = t
  return loss, aux
