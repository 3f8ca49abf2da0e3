"""The continuous-time denoising loss and its pieces (time sampling, loss weights).

Every weighting is defined on the x-space error: loss = w(logsnr) * ||x_hat - x||^2 (mean over
the non-batch dims), so losses under different parameterizations compare directly. Since for a
fixed z the prediction errors relate as
  eps_hat - eps = -e^(logsnr/2) (x_hat - x)        ->  eps-MSE = SNR       * x-MSE
  v_hat - v     = -sqrt(1 + SNR) (x_hat - x)       ->  v-MSE   = (1 + SNR) * x-MSE
  u_hat - u     = -(1 + e^(logsnr/2)) (x_hat - x)  ->  u-MSE   = (1 + sqrt(SNR))^2 * x-MSE
(u = eps - x the rectified-flow velocity; x = z_rf - t u with t = sigma / (alpha + sigma)),
the weightings are (SNR = exp(logsnr)):
  'constant'       plain MSE on the model's own target: w = 1 (x), SNR (eps), 1 + SNR (v),
                   (1 + sqrt(SNR))^2 (flow)
  'snr'            w = SNR            (eps-MSE; the 'simple' loss of Ho et al. 2020)
  'truncated_snr'  w = max(SNR, 1)    (Salimans & Ho 2022)
  'v_mse'          w = 1 + SNR        (v-MSE)
  'min_snr'        w = min(SNR, 5)    (Min-SNR-gamma, Hang et al. 2023, gamma = 5: v-MSE
                                      times min(SNR, 5) / (1 + SNR), eps-MSE times min(SNR, 5) / SNR)
  'flow'           w = (1 + sqrt(SNR))^2 = 1 / t^2   (u-MSE: the flow-matching loss of rectified
                                      flow, Liu et al. 2023, Lipman et al. 2023, SD3)
  'auto'           the standard loss of the prediction: 'flow' for prediction='flow', 'v_mse' for
                   v, eps and x (the library's long-standing default for them)
The loss is evaluated as (MSE on the model's own target) * w / w_own, with the ratio formed in
log space, which equals w * x-MSE exactly but never multiplies huge by tiny numbers.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import noise as noise_lib
from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.schedules import q_sample

WEIGHTINGS = ("constant", "snr", "truncated_snr", "v_mse", "min_snr", "flow", "auto")
# Training-time draws of t (`sample_t`): U[0, 1], or SD3's logit-normal t = sigmoid(m + s n).
T_SAMPLINGS = ("uniform", "logit_normal")
MIN_SNR_GAMMA = 5.0   # 'min_snr': the paper's default

# model_fn(z [B, ...], logsnr [B], cond pytree or None) -> output [B, ...] in `prediction` space.
ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def check_weighting(weighting: str) -> None:
  """Raises a ValueError naming the choices unless `weighting` is known."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"loss weighting={weighting!r} is not one of {WEIGHTINGS} "
                     "(set diffusion.loss_weighting)")


def resolve_weighting(weighting: str, prediction: str) -> str:
  """The weighting name that `weighting` means for `prediction`: 'auto' -> 'flow' for flow
  models and 'v_mse' otherwise; 'constant' (plain MSE on the model's own target) -> 'snr' (eps),
  'v_mse' (v), 'flow' (flow), or stays 'constant' (x: w = 1); other names as they are."""
  check_weighting(weighting)
  param.check_prediction(prediction)
  if weighting == "auto":
    return "flow" if prediction == "flow" else "v_mse"
  if weighting == "constant":
    return {"x": "constant", "eps": "snr", "v": "v_mse", "flow": "flow"}[prediction]
  return weighting


def log_loss_weight(logsnr: jax.Array, weighting: str, *, prediction: str = "x") -> jax.Array:
  """log w(logsnr) of the x-space loss weight; `prediction` matters only for 'constant' and
  'auto'."""
  weighting = resolve_weighting(weighting, prediction)
  logsnr = jnp.asarray(logsnr, jnp.float32)
  if weighting == "constant":
    return jnp.zeros_like(logsnr)
  if weighting == "snr":
    return logsnr
  if weighting == "truncated_snr":
    return jnp.maximum(logsnr, 0.0)
  if weighting == "min_snr":
    return jnp.minimum(logsnr, jnp.log(MIN_SNR_GAMMA))
  if weighting == "flow":
    return 2.0 * jax.nn.softplus(0.5 * logsnr)  # log (1 + e^(logsnr/2))^2
  return jax.nn.softplus(logsnr)  # log(1 + SNR)


def loss_weight(logsnr: jax.Array, weighting: str, *, prediction: str = "x") -> jax.Array:
  """The weight w(logsnr) multiplying the x-space MSE (see the module docstring)."""
  return jnp.exp(log_loss_weight(logsnr, weighting, prediction=prediction))


def check_t_sampling(t_sampling: str, *, num_discrete_steps: int = 0,
                     logit_normal_std: Any = 1.0) -> None:
  """Raises a ValueError naming the key unless the time-sampling settings fit together."""
  if t_sampling not in T_SAMPLINGS:
    raise ValueError(f"t_sampling={t_sampling!r} is not one of {T_SAMPLINGS} "
                     "(set diffusion.t_sampling)")
  if t_sampling == "logit_normal":
    if num_discrete_steps:
      raise ValueError("t_sampling='logit_normal' draws continuous t: set "
                       "diffusion.num_train_timesteps=0 (or t_sampling='uniform')")
    if isinstance(logit_normal_std, (int, float)) and not (
        logit_normal_std > 0 and math.isfinite(logit_normal_std)):
      raise ValueError(f"logit_normal_std={logit_normal_std} must be a number > 0 "
                       "(set diffusion.logit_normal_std)")


def t_sampling_from_config(diffusion_config) -> Dict[str, Any]:
  """The training-time draws of t of a config's `diffusion` section as `diffusion_loss` /
  `sample_t` keywords: t_sampling, logit_normal_mean, logit_normal_std. The keys are optional:
  a config written before them draws t uniformly, as it always did."""
  out = {"t_sampling": str(diffusion_config.get("t_sampling", "uniform")),
         "logit_normal_mean": float(diffusion_config.get("logit_normal_mean", 0.0)),
         "logit_normal_std": float(diffusion_config.get("logit_normal_std", 1.0))}
  check_t_sampling(out["t_sampling"],
                   num_discrete_steps=int(diffusion_config.get("num_train_timesteps", 0)),
                   logit_normal_std=out["logit_normal_std"])
  return out


def sample_t(key: jax.Array, batch_size: int, *, num_discrete_steps: int = 0,
             t_sampling: str = "uniform", logit_normal_mean: Any = 0.0,
             logit_normal_std: Any = 1.0) -> jax.Array:
  """Training times [B] (float32).

  t_sampling='uniform': U[0, 1], or uniform on {1/N, ..., N/N} when num_discrete_steps N > 0.
  t_sampling='logit_normal' (Esser et al. 2024, SD3): t = sigmoid(m + s n), n ~ N(0, 1), with
  m = logit_normal_mean and s = logit_normal_std, i.e. logit(t) ~ N(m, s^2); continuous only.
  """
  if num_discrete_steps < 0:
    raise ValueError(f"num_discrete_steps must be >= 0, got {num_discrete_steps}")
  check_t_sampling(t_sampling, num_discrete_steps=num_discrete_steps,
                   logit_normal_std=logit_normal_std)
  if t_sampling == "logit_normal":
    n = jax.random.normal(key, (batch_size,), jnp.float32)
    return jax.nn.sigmoid(jnp.asarray(logit_normal_mean, jnp.float32)
                          + jnp.asarray(logit_normal_std, jnp.float32) * n)
  if num_discrete_steps == 0:
    return jax.random.uniform(key, (batch_size,), jnp.float32)
  i = jax.random.randint(key, (batch_size,), 0, num_discrete_steps)
  return (i + 1).astype(jnp.float32) / num_discrete_steps


def _mean_over_example(a: jax.Array) -> jax.Array:
  return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def weighted_mean(per_example: jax.Array, example_weight: Optional[jax.Array]) -> jax.Array:
  """Mean over [B], or sum(w * l) / sum(w) with example weights w [B] (0 when all w are 0)."""
  if example_weight is None:
    return jnp.mean(per_example)
  example_weight = jnp.asarray(example_weight, jnp.float32)
  if example_weight.shape != per_example.shape:
    raise ValueError(f"example_weight must have shape {per_example.shape} (one weight per "
                     f"example), got {example_weight.shape}")
  total = jnp.sum(example_weight)
  return jnp.sum(example_weight * per_example) / jnp.maximum(total, 1e-12)


def diffusion_loss(*, model_fn: ModelFn, x: jax.Array, key: jax.Array, cond: Any = None,
                   schedule: Callable[[jax.Array], jax.Array], prediction: str = "v",
                   weighting: str = "auto", num_discrete_steps: int = 0,
                   example_weight: Optional[jax.Array] = None,
                   noise_fn: Optional[noise_lib.NoiseFn] = None, t_sampling: str = "uniform",
                   logit_normal_mean: Any = 0.0, logit_normal_std: Any = 1.0
                   ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The weighted denoising loss of one batch.

  Args:
    model_fn: model_fn(z, logsnr, cond) -> output [B, ...] in the `prediction` parameterization.
    x: clean data [B, ...] (e.g. [B, T, H, W, C]).
    key: PRNG key; split into the time and the noise draws.
    cond: conditioning pytree with leading batch dim, passed to model_fn as it is.
    schedule: t -> logsnr (e.g. a `LogSNRSchedule`).
    prediction: 'v' | 'eps' | 'x' | 'flow', what model_fn outputs.
    weighting: one of WEIGHTINGS (see the module docstring); 'auto' (the default) is the
      flow-matching MSE on u for prediction='flow' and 'v_mse' otherwise.
    num_discrete_steps: 0 for continuous t ~ U[0, 1]; N > 0 for t on {1/N, ..., 1}.
    example_weight: optional [B] weights; the loss is their weighted mean.
    noise_fn: optional (key, shape, dtype) -> eps, e.g. frame-correlated noise
      (`noise.noise_fn_from_config`); default i.i.d. standard normals.
    t_sampling, logit_normal_mean, logit_normal_std: how t is drawn (`sample_t`): 'uniform'
      (the default) or SD3's 'logit_normal'.

  Returns:
    (loss scalar, aux) with aux = {'loss_per_example' [B], 'x_mse' [B], 'weight' [B],
    't' [B], 'logsnr' [B]}.
  """
  check_weighting(weighting)
  param.check_prediction(prediction)
  if x.ndim < 1:
    raise ValueError(f"x must be batched [B, ...], got shape {x.shape}")
  t_key, eps_key = jax.random.split(key)
  batch = x.shape[0]
  t = sample_t(t_key, batch, num_discrete_steps=num_discrete_steps, t_sampling=t_sampling,
               logit_normal_mean=logit_normal_mean, logit_normal_std=logit_normal_std)
  logsnr = schedule(t)  # [B]
  eps = noise_lib.draw(noise_fn, eps_key, x.shape, x.dtype)
  z = q_sample(x=x, eps=eps, logsnr=logsnr)
  output = model_fn(z, logsnr, cond)
  if output.shape != x.shape:
    raise ValueError(f"model_fn returned shape {output.shape}; expected the data shape {x.shape}")
  target = param.from_x_and_eps(prediction=prediction, x=x, eps=eps, logsnr=logsnr)
  own_mse = _mean_over_example(
      jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32)))  # [B]
  log_own = log_loss_weight(logsnr, "constant", prediction=prediction)
  log_w = log_loss_weight(logsnr, weighting, prediction=prediction)
  per_example = own_mse * jnp.exp(log_w - log_own)
  aux = {
      "loss_per_example": per_example,
      "x_mse": own_mse * jnp.exp(-log_own),
      "weight": jnp.exp(log_w),
      "t": t,
      "logsnr": logsnr,
  }
  return weighted_mean(per_example, example_weight), aux


def packed_diffusion_loss(*, model_fn: ModelFn, x: jax.Array, segment_ids: jax.Array,
                          num_segments: int, key: jax.Array, cond: Any = None,
                          schedule: Callable[[jax.Array], jax.Array], prediction: str = "v",
                          weighting: str = "auto", num_discrete_steps: int = 0,
                          noise_fn: Optional[noise_lib.NoiseFn] = None,
                          t_sampling: str = "uniform", logit_normal_mean: Any = 0.0,
                          logit_normal_std: Any = 1.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """`diffusion_loss` of packed rows: each row of x [B, T, ...] holds several examples one
  after another along T, `segment_ids` [B, T] int says which (0..S-1, S = num_segments; -1:
  padding frames, not in the loss).

  Every segment draws its own t (logsnr [B, S], passed to model_fn as the per-segment logSNR;
  its frames are noised at it); its loss is the weighted MSE over its frames, as
  `diffusion_loss` computes for an example alone; the loss is the mean over the segments that
  have frames. aux as `diffusion_loss`'s with [B * S] entries (row-major) and 'valid' [B * S].
  """
  check_weighting(weighting)
  param.check_prediction(prediction)
  if x.ndim < 2 or segment_ids.shape != x.shape[:2]:
    raise ValueError(f"segment_ids must be [B, T] = {x.shape[:2]}, got {segment_ids.shape}")
  b, t_len = x.shape[:2]
  t_key, eps_key = jax.random.split(key)
  t = sample_t(t_key, b * num_segments, num_discrete_steps=num_discrete_steps,
               t_sampling=t_sampling, logit_normal_mean=logit_normal_mean,
               logit_normal_std=logit_normal_std).reshape(b, num_segments)
  logsnr = schedule(t)                                                   # [B, S]
  seg = segment_ids.astype(jnp.int32)
  frame_logsnr = jnp.take_along_axis(logsnr, jnp.clip(seg, 0, num_segments - 1), axis=1)
  eps = noise_lib.draw(noise_fn, eps_key, x.shape, x.dtype)
  frames = lambda a: a.reshape((b * t_len,) + a.shape[2:])
  z = q_sample(x=frames(x), eps=frames(eps), logsnr=frames(frame_logsnr)).reshape(x.shape)
  output = model_fn(z, logsnr, cond)
  if output.shape != x.shape:
    raise ValueError(f"model_fn returned shape {output.shape}; expected the data shape {x.shape}")
  target = param.from_x_and_eps(prediction=prediction, x=frames(x), eps=frames(eps),
                                logsnr=frames(frame_logsnr)).reshape(x.shape)
  frame_mse = jnp.mean(jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32)),
                       axis=tuple(range(2, x.ndim)))                     # [B, T]
  onehot = jax.nn.one_hot(seg, num_segments, dtype=jnp.float32)          # [B, T, S] (-1: 0)
  count = jnp.sum(onehot, axis=1)                                        # [B, S]
  own_mse = jnp.einsum("bt,bts->bs", frame_mse, onehot) / jnp.maximum(count, 1.0)
  log_own = log_loss_weight(logsnr, "constant", prediction=prediction)
  log_w = log_loss_weight(logsnr, weighting, prediction=prediction)
  per_segment = own_mse * jnp.exp(log_w - log_own)
  valid = (count > 0).astype(jnp.float32)
  aux = {"loss_per_example": per_segment.reshape(-1),
         "x_mse": (own_mse * jnp.exp(-log_own)).reshape(-1),
         "weight": jnp.exp(log_w).reshape(-1), "t": t.reshape(-1),
         "logsnr": logsnr.reshape(-1), "valid": valid.reshape(-1)}
  return weighted_mean(aux["loss_per_example"], aux["valid"]), aux
