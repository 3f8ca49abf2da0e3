"""Ancestral (DDPM), DDIM and flow-ODE (Euler, Heun) samplers in continuous time, on any number
of steps.

The time grid is t_i = i / N; step j = 0..N-1 goes from t = (N - j) / N to s = (N - j - 1) / N,
and the last step (s = 0) returns the x prediction without noise. The single-step functions
`ddim_step` and `ddpm_step` are public: progressive distillation and reconstruction guidance
reuse them.

DDPM posterior q(z_s | z_t, x) for s < t (r = SNR_t / SNR_s):
  mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x
  var  = (1 - r) sigma_s^2  ('small', the true posterior variance)
       = (1 - r) sigma_t^2  ('large', = sigma^2_{t|s}, the forward step's variance)
  'interp': log-variance = f * log(large) + (1 - f) * log(small), f = `var_interp` in [0, 1]
  (Nichol & Dhariwal 2021's interpolation with a fixed fraction instead of a learned one).
DDIM (Song et al. 2021): z_s = alpha_s x + sqrt(sigma_s^2 - c^2) eps + c * noise with
c^2 = eta^2 (1 - r) sigma_s^2; eta = 0 is deterministic and eta = 1 is DDPM 'small'.

Euler and Heun integrate the probability-flow ODE of the rectified-flow path,
d z_rf / dt = u(z_rf, t), z_rf = z / (alpha + sigma) = (1 - t) x + t eps, t = sigma / (alpha +
sigma) (`schedules.flow_t_from_logsnr`), from the first to the last logSNR of the grid, with the
velocity u = eps_pred - x_pred of any model (eps, x, v or flow: the step goes through
`to_x_and_eps` like every other, so guidance and thresholding act as they do for DDIM):
  euler  z_rf_s = z_rf_t + (t_s - t_t) u_t
  heun   z_rf_s = z_rf_t + (t_s - t_t) (u_t + u_s') / 2, u_s' the velocity at the Euler point
         (a second model evaluation per step; the last step, to t = 0, is Euler's, which returns
         the x prediction like every sampler here, so it costs 2N - 1 evaluations).
Since z_t = alpha_t x + sigma_t eps for the (consistent) predictions, z_rf_t = (1 - t) x + t eps and
the Euler step lands on (1 - t_s) x + t_s eps, i.e. exactly on DDIM's (eta = 0) z_s: Euler is
deterministic DDIM on the same grid, written in flow coordinates (up to roundoff).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.diffusion import guidance as guid
from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion import reconstruction as recon
from vdm_jax.diffusion.schedules import (alpha_sigma, broadcast_logsnr, flow_scale,
                                         flow_t_from_logsnr)

SAMPLERS = ("ddim", "ddpm", "euler", "heun")
FLOW_SAMPLERS = ("euler", "heun")   # deterministic ODE samplers (eta is ignored, as by ddpm)
DDPM_VARIANCES = ("small", "large", "interp")
LOOPS = ("fori", "scan")

# Arguments of `sample` that must be static under jax.jit:
#   jax.jit(sample, static_argnames=SAMPLE_STATIC_ARGNAMES)
SAMPLE_STATIC_ARGNAMES = ("model_fn", "shape", "num_steps", "schedule", "sampler", "prediction",
                          "guidance_schedule", "guidance_const_steps", "clip", "ddpm_variance",
                          "return_trajectory", "loop", "observation_method", "noise_fn")


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(-x)) for x > 0, accurate for small and large x."""
  x = jnp.asarray(x)
  return jnp.where(x < np.log(2.0), jnp.log(-jnp.expm1(-x)), jnp.log1p(-jnp.exp(-x)))


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")


def ddpm_posterior(*, z_t: jax.Array, x: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array,
                   variance: str = "small", var_interp: Any = 0.5):
  """Mean and log-variance of q(z_s | z_t, x); z_t, x: [B, ...], logsnr_t < logsnr_s: [B]."""
  _check_choice("ddpm variance", variance, DDPM_VARIANCES)
  lt = broadcast_logsnr(logsnr_t, z_t)
  ls = broadcast_logsnr(logsnr_s, z_t)
  alpha_t, _ = alpha_sigma(lt)
  alpha_s, _ = alpha_sigma(ls)
  r = jnp.exp(lt - ls)  # SNR_t / SNR_s < 1
  one_minus_r = -jnp.expm1(lt - ls)
  mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x
  log_one_minus_r = log1mexp(ls - lt)
  small = log_one_minus_r + jax.nn.log_sigmoid(-ls)
  large = log_one_minus_r + jax.nn.log_sigmoid(-lt)
  if variance == "small":
    logvar = small
  elif variance == "large":
    logvar = large
  else:
    logvar = var_interp * large + (1.0 - var_interp) * small
  return mean, logvar


def ddpm_step(*, z_t: jax.Array, x_pred: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array,
              key: jax.Array, variance: str = "small", var_interp: Any = 0.5,
              noise_fn: Optional[noise_lib.NoiseFn] = None) -> jax.Array:
  """One ancestral step: a draw of z_s ~ q(z_s | z_t, x = x_pred). Shapes as z_t [B, ...].
  `noise_fn` (key, shape, dtype) -> noise draws the step's noise (default i.i.d. normals)."""
  mean, logvar = ddpm_posterior(z_t=z_t, x=x_pred, logsnr_t=logsnr_t, logsnr_s=logsnr_s,
                                variance=variance, var_interp=var_interp)
  noise = noise_lib.draw(noise_fn, key, z_t.shape, z_t.dtype)
  return mean + jnp.exp(0.5 * logvar) * noise


def ddim_step(*, z_t: jax.Array, x_pred: jax.Array, eps_pred: jax.Array, logsnr_t: jax.Array,
              logsnr_s: jax.Array, eta: Any = 0.0, key: Optional[jax.Array] = None,
              noise_fn: Optional[noise_lib.NoiseFn] = None) -> jax.Array:
  """One DDIM step from z_t to z_s given predictions x_pred, eps_pred (all [B, ...]).

  eta = 0 (a concrete zero) is the deterministic update z_s = alpha_s x + sigma_s eps and needs
  no key; eta > 0 (or a traced eta) adds noise of variance eta^2 (1 - r) sigma_s^2 and needs key
  (drawn by `noise_fn`, default i.i.d. normals).
  """
  lt = broadcast_logsnr(logsnr_t, z_t)
  ls = broadcast_logsnr(logsnr_s, z_t)
  alpha_s, sigma_s = alpha_sigma(ls)
  if guid.is_concrete_zero(eta):
    return alpha_s * x_pred + sigma_s * eps_pred
  if isinstance(eta, (int, float)) and not 0.0 <= eta <= 1.0:
    raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
  if key is None:
    raise ValueError("ddim_step with eta != 0 needs a PRNG key")
  one_minus_r = -jnp.expm1(lt - ls)
  c2_frac = jnp.square(eta) * one_minus_r  # c^2 / sigma_s^2
  noise = noise_lib.draw(noise_fn, key, z_t.shape, z_t.dtype)
  return (alpha_s * x_pred + sigma_s * jnp.sqrt(jnp.maximum(1.0 - c2_frac, 0.0)) * eps_pred
          + sigma_s * jnp.sqrt(c2_frac) * noise)


def euler_step(*, z_t: jax.Array, velocity: jax.Array, logsnr_t: jax.Array,
               logsnr_s: jax.Array) -> jax.Array:
  """One Euler step of the rectified-flow ODE from z_t (the VP z at logsnr_t) to logsnr_s.

  z_rf_s = z_t / (alpha_t + sigma_t) + (t_s - t_t) velocity, returned as the VP
  z_s = (alpha_s + sigma_s) z_rf_s; z_t, velocity: [B, ...]; logsnr_t, logsnr_s: [B] (or
  scalars). `velocity` = eps_pred - x_pred (a Heun step passes the mean of two velocities).
  """
  if z_t.shape != velocity.shape:
    raise ValueError(f"z_t and velocity must have the same shape, got {z_t.shape} and "
                     f"{velocity.shape}")
  lt = broadcast_logsnr(logsnr_t, z_t)
  ls = broadcast_logsnr(logsnr_s, z_t)
  dt = flow_t_from_logsnr(ls) - flow_t_from_logsnr(lt)   # < 0: towards the data
  return flow_scale(ls) * (z_t / flow_scale(lt) + dt * velocity)


def step_times(step: Any, num_steps: int):
  """(t, s) of sampling step `step` (0 = first): t = (N - step) / N, s = t - 1 / N."""
  i = num_steps - 1 - step
  t = (jnp.asarray(i, jnp.float32) + 1.0) / num_steps
  s = jnp.asarray(i, jnp.float32) / num_steps
  return t, s


def sample(*, model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
           shape: Sequence[int], key: jax.Array, num_steps: int,
           schedule: Callable[[jax.Array], jax.Array], sampler: str = "ddim", eta: Any = 0.0,
           prediction: str = "v", cond: Any = None, uncond: Any = None,
           guidance_weight: Any = 0.0, guidance_schedule: str = "constant",
           guidance_low: Any = 1.0, guidance_const_steps: int = 0, clip: str = "none",
           dynamic_percentile: Any = 0.995, ddpm_variance: str = "small",
           ddpm_var_interp: Any = 0.5, init_noise: Optional[jax.Array] = None,
           return_trajectory: bool = False, loop: str = "fori",
           observation: Optional[recon.Observation] = None,
           observation_method: str = "reconstruction", reconstruction_weight: Any = 1.0,
           noise_fn: Optional[noise_lib.NoiseFn] = None, clip_range: Any = None):
  """Draws samples of `shape` = [B, ...] with `num_steps` DDIM or ancestral steps.

  Args:
    model_fn: model_fn(z [B', ...], logsnr [B'], cond) -> output in `prediction` space
      (B' = 2B when guidance batches [cond; uncond]).
    shape: the sample shape [B, ...] (e.g. [B, T, H, W, C]).
    key: PRNG key for the initial noise and the per-step noise.
    num_steps: N >= 1 steps on the grid t_i = i / N.
    schedule: t -> logsnr (e.g. a `LogSNRSchedule`).
    sampler: 'ddim' (with `eta`), 'ddpm' (ancestral, with `ddpm_variance` 'small' | 'large' |
      'interp' and the interpolation fraction `ddpm_var_interp`), or the deterministic ODE
      solvers 'euler' | 'heun' of the rectified-flow path (`eta` is DDIM's: the others
      ignore it).
    prediction: 'v' | 'eps' | 'x' | 'flow'.
    cond, uncond: conditioning pytrees (leading dim B) for the conditional and unconditional
      model; uncond is needed only when guiding.
    guidance_weight: w in (1 + w) eps_cond - w eps_uncond; 0 = conditional model.
    guidance_schedule: 'constant' or 'oscillating' (w and `guidance_low` alternating after
      `guidance_const_steps` steps of w).
    clip: 'none' | 'static' | 'dynamic' thresholding of the x prediction at every step, with
      `dynamic_percentile`.
    clip_range: optional (lo, hi) bounds of static clipping, broadcastable to `shape`
      (default [-1, 1]); e.g. the bounds of a scaled residual over a known video.
    init_noise: optional z_1 [B, ...]; drawn from N(0, I) (or `noise_fn`) when None.
    return_trajectory: also return [z_1, z_{(N-1)/N}, ..., x]: [N + 1, B, ...].
    loop: 'fori' (lax.fori_loop) or 'scan' (lax.scan; always used for trajectories).
    observation: optional `reconstruction.Observation` y = A(x) to condition on (observed
      frames or entries x_a, or a downsampled video); None samples unconditionally on it.
    observation_method: 'reconstruction' (VDM's reconstruction guidance with weight
      `reconstruction_weight` = w_r, scalar or [B], traceable) or 'replacement' (the observed
      part of z replaced by a fresh q(z_s | x_a) draw every step; needs factor 1). Both keep
      x_a exactly in the returned sample when the observation is a mask over x.
    noise_fn: optional (key, shape, dtype) -> noise for z_1 and every stochastic step, e.g.
      frame-correlated noise (`noise.noise_fn_from_config`, the prior the model trained with);
      default i.i.d. standard normals.

  Returns:
    x [B, ...], or (x, trajectory) when return_trajectory.
  """
  _check_choice("sampler", sampler, SAMPLERS)
  _check_choice("loop", loop, LOOPS)
  _check_choice("ddpm_variance", ddpm_variance, DDPM_VARIANCES)
  param.check_prediction(prediction)
  guid.check_guidance_schedule(guidance_schedule)
  guid.check_clip(clip)
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
  if isinstance(eta, (int, float)) and not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")
  if isinstance(ddpm_var_interp, (int, float)) and not 0.0 <= ddpm_var_interp <= 1.0:
    raise ValueError(f"ddpm_var_interp must lie in [0, 1], got {ddpm_var_interp}")
  if clip == "dynamic":
    guid.check_percentile(dynamic_percentile)
  for name, value in (("guidance_weight", guidance_weight), ("guidance_low", guidance_low),
                      ("reconstruction_weight", reconstruction_weight)):
    v = guid.concrete_float(value)
    if v is not None and not np.isfinite(v):
      raise ValueError(f"{name}={v} must be a finite number")
  if uncond is None and isinstance(guidance_weight, (int, float)) and guidance_weight != 0:
    raise ValueError(f"guidance_weight={guidance_weight} needs an unconditional input: pass "
                     "uncond (e.g. the null text embedding) or set the guidance weight to 0")
  shape = tuple(int(n) for n in shape)
  if not shape:
    raise ValueError("shape must be [B, ...] with a leading batch dimension")
  batch = shape[0]
  if observation is not None:
    recon.check_observation_method(observation_method)
    recon.check_observation(observation, shape)
    if observation_method == "replacement" and observation.factor != 1:
      raise ValueError("observation_method='replacement' needs an observation of entries of x "
                       "(factor 1); use 'reconstruction' for a downsampled observation")
  if clip_range is not None and observation is not None:
    raise ValueError("clip_range is not supported together with an observation")
  replacing = observation is not None and observation_method == "replacement"
  # Keys are split only when something random is drawn (PRNG code is slow to compile on CPU).
  stochastic = sampler == "ddpm" or (sampler == "ddim" and not guid.is_concrete_zero(eta))
  noise_key, step_key = jax.random.split(key) if (stochastic or init_noise is None) else (
      None, None)
  if init_noise is None:
    z_init = noise_lib.draw(noise_fn, noise_key, shape, jnp.float32)
  else:
    if tuple(init_noise.shape) != shape:
      raise ValueError(f"init_noise has shape {init_noise.shape}, expected {shape}")
    z_init = jnp.asarray(init_noise)
  if replacing:  # z_1's observed part: a draw of q(z_1 | x_a) with z_1's own noise
    replace_key = jax.random.fold_in(key, 0x5EED)
    z_init = recon.replace_observed(z=z_init, observation=observation, noise=z_init,
                                    logsnr=jnp.full((batch,), schedule(1.0), jnp.float32))
  if observation is None:
    def predict(z, logsnr, w):
      return guid.predict_x_and_eps(
          model_fn=model_fn, z=z, logsnr=logsnr, prediction=prediction, cond=cond,
          uncond=uncond, guidance_weight=w, clip=clip, dynamic_percentile=dynamic_percentile,
          clip_range=clip_range)
  else:
    predict = recon.observation_step_fns(
        observation=observation, method=observation_method, weight=reconstruction_weight,
        model_fn=model_fn, prediction=prediction, cond=cond, uncond=uncond, clip=clip,
        dynamic_percentile=dynamic_percentile)

  def body(step, z_t):
    t, s = step_times(step, num_steps)
    logsnr_t = jnp.full((batch,), schedule(t), jnp.float32)
    logsnr_s = jnp.full((batch,), schedule(s), jnp.float32)
    weight = guid.guidance_weight_at(step, weight=guidance_weight, schedule=guidance_schedule,
                                     low=guidance_low, const_steps=guidance_const_steps)
    x_pred, eps_pred = predict(z_t, logsnr_t, weight)
    x_pred = x_pred.astype(z_t.dtype)
    eps_pred = eps_pred.astype(z_t.dtype)
    if sampler == "ddim":
      step_key_j = None if guid.is_concrete_zero(eta) else jax.random.fold_in(step_key, step)
      z_s = ddim_step(z_t=z_t, x_pred=x_pred, eps_pred=eps_pred, logsnr_t=logsnr_t,
                      logsnr_s=logsnr_s, eta=eta, key=step_key_j, noise_fn=noise_fn)
    elif sampler in FLOW_SAMPLERS:
      u_t = eps_pred - x_pred
      z_s = euler_step(z_t=z_t, velocity=u_t, logsnr_t=logsnr_t, logsnr_s=logsnr_s)
      if sampler == "heun":
        def heun(z_euler):   # the trapezoid correction with the velocity at the Euler point
          x_s, eps_s = predict(z_euler.astype(z_t.dtype), logsnr_s, weight)
          u_s = eps_s.astype(z_t.dtype) - x_s.astype(z_t.dtype)
          return euler_step(z_t=z_t, velocity=0.5 * (u_t + u_s), logsnr_t=logsnr_t,
                            logsnr_s=logsnr_s).astype(z_euler.dtype)
        # The last step (to t = 0) is Euler's: it returns x_pred, with no evaluation at t = 0.
        z_s = jax.lax.cond(step == num_steps - 1, lambda z: z, heun, z_s)
    else:
      z_s = ddpm_step(z_t=z_t, x_pred=x_pred, logsnr_t=logsnr_t, logsnr_s=logsnr_s,
                      key=jax.random.fold_in(step_key, step), variance=ddpm_variance,
                      var_interp=ddpm_var_interp, noise_fn=noise_fn)
    if replacing:
      x_pred = recon.keep_observed(x=x_pred, observation=observation)
      fresh = noise_lib.draw(noise_fn, jax.random.fold_in(replace_key, step), z_t.shape,
                             z_t.dtype)
      z_s = recon.replace_observed(z=z_s.astype(z_t.dtype), observation=observation,
                                   logsnr=logsnr_s, noise=fresh)
    return jnp.where(step == num_steps - 1, x_pred, z_s.astype(z_t.dtype))

  if loop == "fori" and not return_trajectory:
    return jax.lax.fori_loop(0, num_steps, body, z_init)

  def scan_body(z_t, step):
    z_s = body(step, z_t)
    return z_s, (z_s if return_trajectory else None)

  x, zs = jax.lax.scan(scan_body, z_init, jnp.arange(num_steps))
  if not return_trajectory:
    return x
  return x, jnp.concatenate([z_init[None], zs], axis=0)
