"""Continuous-time logSNR schedules and the forward (noising) process.

Time runs over t in [0, 1]: t = 0 is clean data, t = 1 is (almost) pure noise, and the
log signal-to-noise ratio logsnr(t) = log(alpha_t^2 / sigma_t^2) decreases in t. The process is
variance preserving: alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr), z = alpha x + sigma eps.

Schedules (each with an analytic inverse t(logsnr), which samplers stepping between logSNRs and
progressive distillation use):
  cosine          logsnr = -2 log tan(pi t / 2), with t mapped affinely into [t_min, t_max] so that
                  logsnr(0) = logsnr_max and logsnr(1) = logsnr_min exactly (the standard
                  clipped cosine of Kingma et al. 2021 / Salimans & Ho 2022).
  shifted_cosine  cosine + 2 log(base_resolution / resolution) (simple diffusion, Hoogeboom et al.
                  2023): a larger image gets a lower logSNR at every t. The clip range is shifted by
                  the same amount, so the endpoints are logsnr_max + shift and logsnr_min + shift.
  linear          linear in logSNR from logsnr_max (t = 0) to logsnr_min (t = 1).
  rectified_flow  logsnr = 2 log((1 - t) / t), clipped to [logsnr_min, logsnr_max]: the path
                  z_rf = (1 - t) x + t eps of rectified flow / flow matching (Liu et al. 2023,
                  Lipman et al. 2023, SD3), which is the VP z rescaled, z_rf = z / (alpha + sigma)
                  with t = sigma / (alpha + sigma) = sigmoid(-logsnr / 2).
  shifted_rectified_flow  rectified_flow + 2 log(base_resolution / resolution), the shift of
                  shifted_cosine. SD3's time shift t' = s t / (1 + (s - 1) t) is exactly a logSNR
                  shift of -2 log s (`time_shift`), so s = resolution / base_resolution here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("cosine", "shifted_cosine", "linear", "rectified_flow", "shifted_rectified_flow")
KINDS = ("cosine", "linear", "rectified_flow")   # LogSNRSchedule.kind


def broadcast_logsnr(logsnr: jax.Array, ref: jax.Array) -> jax.Array:
  """Reshapes a per-example logsnr [B] (or a scalar []) to broadcast against ref [B, ...]."""
  logsnr = jnp.asarray(logsnr)
  if logsnr.ndim == 0:
    return logsnr
  if logsnr.ndim != 1 or ref.ndim < 1 or logsnr.shape[0] != ref.shape[0]:
    raise ValueError(
        f"logsnr must have shape [B] = ({ref.shape[0] if ref.ndim else '?'},) matching the "
        f"leading (batch) dim of an array of shape {ref.shape}, or be a scalar; got shape "
        f"{logsnr.shape}")
  return logsnr.reshape(logsnr.shape + (1,) * (ref.ndim - 1))


def alpha_sigma(logsnr: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Returns (alpha, sigma) with alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr).

  Computed as exp(0.5 * log_sigmoid(.)) so that both stay accurate at extreme logSNRs.
  Shapes follow logsnr.
  """
  logsnr = jnp.asarray(logsnr)
  alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr))
  sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))
  return alpha, sigma


def q_sample(*, x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """Forward process z = alpha x + sigma eps; x, eps: [B, ...], logsnr: [B] -> z: [B, ...]."""
  if x.shape != eps.shape:
    raise ValueError(f"x and eps must have the same shape, got {x.shape} and {eps.shape}")
  alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, x))
  return alpha * x + sigma * eps


def _cosine_constants(logsnr_min: float, logsnr_max: float) -> Tuple[float, float, float]:
  """Angles for the clipped cosine: logsnr(t) = -2 log tan(b + a t), with e = pi/2 - (a + b).

  b = arctan(exp(-logsnr_max / 2)) and e = arctan(exp(logsnr_min / 2)) are both small angles, so
  evaluating tan near each end from its own small angle keeps float32 exact at both endpoints.
  """
  b = math.atan(math.exp(-0.5 * logsnr_max))
  e = math.atan(math.exp(0.5 * logsnr_min))
  a = 0.5 * math.pi - e - b
  return a, b, e


def cosine_logsnr(t: jax.Array, *, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
  """Clipped cosine schedule; t: any shape in [0, 1] -> logsnr of the same shape."""
  a, b, e = _cosine_constants(logsnr_min, logsnr_max)
  t = jnp.asarray(t, jnp.float32)
  # For t < 1/2: -2 log tan(b + a t). For t >= 1/2 use tan(u) = 1 / tan(pi/2 - u) with
  # pi/2 - u = e + a (1 - t), so the small angle near t = 1 is formed without cancellation.
  low = -2.0 * jnp.log(jnp.tan(b + a * jnp.minimum(t, 0.5)))
  high = 2.0 * jnp.log(jnp.tan(e + a * (1.0 - jnp.maximum(t, 0.5))))
  return jnp.where(t < 0.5, low, high)


def cosine_t_from_logsnr(logsnr: jax.Array, *, logsnr_min: float = -20.0,
                         logsnr_max: float = 20.0):
  """Inverse of `cosine_logsnr`; logsnr: any shape -> t of the same shape."""
  a, b, e = _cosine_constants(logsnr_min, logsnr_max)
  logsnr = jnp.asarray(logsnr, jnp.float32)
  # logsnr >= 0: t = (arctan(exp(-logsnr/2)) - b) / a;
  # logsnr < 0:  t = 1 - (arctan(exp(logsnr/2)) - e) / a   (the same, via arctan(1/y)).
  hi = (jnp.arctan(jnp.exp(-0.5 * jnp.maximum(logsnr, 0.0))) - b) / a
  lo = 1.0 - (jnp.arctan(jnp.exp(0.5 * jnp.minimum(logsnr, 0.0))) - e) / a
  return jnp.where(logsnr >= 0.0, hi, lo)


def linear_logsnr(t: jax.Array, *, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
  """Linear in logSNR: logsnr_max at t = 0 down to logsnr_min at t = 1."""
  t = jnp.asarray(t, jnp.float32)
  return logsnr_max + (logsnr_min - logsnr_max) * t


def linear_t_from_logsnr(logsnr: jax.Array, *, logsnr_min: float = -20.0,
                         logsnr_max: float = 20.0):
  """Inverse of `linear_logsnr`."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return (logsnr_max - logsnr) / (logsnr_max - logsnr_min)


def flow_t_from_logsnr(logsnr: jax.Array) -> jax.Array:
  """The rectified-flow time of a logSNR, t = sigma / (alpha + sigma) = sigmoid(-logsnr / 2)
  (no clipping); any shape -> the same shape. z_rf = (1 - t) x + t eps = z / (alpha + sigma)."""
  return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))


def flow_scale(logsnr: jax.Array) -> jax.Array:
  """alpha + sigma of a logSNR (in [1, sqrt 2]): z_rf = z / flow_scale(logsnr)."""
  alpha, sigma = alpha_sigma(logsnr)
  return alpha + sigma


def rectified_flow_logsnr(t: jax.Array, *, logsnr_min: float = -20.0,
                          logsnr_max: float = 20.0):
  """Rectified-flow schedule 2 log((1 - t) / t), clipped to [logsnr_min, logsnr_max]; t: any
  shape in [0, 1] -> logsnr of the same shape (t = 0 and 1 give the clip ends, not +-inf)."""
  t = jnp.asarray(t, jnp.float32)
  logsnr = 2.0 * (jnp.log1p(-t) - jnp.log(t))   # +inf at t = 0, -inf at t = 1: clipped
  return jnp.clip(logsnr, logsnr_min, logsnr_max)


def rectified_flow_t_from_logsnr(logsnr: jax.Array, *, logsnr_min: float = -20.0,
                                 logsnr_max: float = 20.0):
  """Inverse of `rectified_flow_logsnr` on [logsnr_min, logsnr_max]: t = sigmoid(-logsnr / 2)
  of the clipped logsnr (so t stays in [t(logsnr_max), t(logsnr_min)], inside (0, 1))."""
  logsnr = jnp.clip(jnp.asarray(logsnr, jnp.float32), logsnr_min, logsnr_max)
  return flow_t_from_logsnr(logsnr)


def time_shift(s: float) -> float:
  """The logSNR offset -2 log s that equals SD3's time shift t' = s t / (1 + (s - 1) t) of the
  rectified-flow schedule (s > 1 moves every t towards noise): since
  (1 - t') / t' = (1 - t) / (s t), logsnr(t') = logsnr(t) - 2 log s. Use it as
  LogSNRSchedule('rectified_flow', lo, hi, shift=time_shift(s))."""
  if not s > 0 or not math.isfinite(s):
    raise ValueError(f"the time shift s must be a positive number, got {s}")
  return -2.0 * math.log(s)


def resolution_shift(resolution: float, base_resolution: float) -> float:
  """The logSNR offset 2 log(base / resolution) of the shifted schedules (negative above the
  base); for rectified flow it is SD3's time shift s = resolution / base (`time_shift`)."""
  if resolution <= 0 or base_resolution <= 0:
    raise ValueError(f"resolutions must be positive, got resolution={resolution}, "
                     f"base_resolution={base_resolution}")
  return 2.0 * math.log(base_resolution / resolution)


@dataclasses.dataclass(frozen=True)
class LogSNRSchedule:
  """A logSNR schedule t -> logsnr with its analytic inverse. Hashable (a valid jit static arg).

  Attributes:
    kind: 'cosine', 'linear' or 'rectified_flow' (a shifted cosine is kind='cosine' with
      shift != 0; a shifted rectified flow is kind='rectified_flow' with shift != 0).
    logsnr_min: configured logSNR at t = 1, before the shift.
    logsnr_max: configured logSNR at t = 0, before the shift.
    shift: constant added to the logSNR at every t (and to both ends of the clip range).
  """
  kind: str = "cosine"
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"LogSNRSchedule.kind must be one of {KINDS}, got {self.kind!r}")
    for name in ("logsnr_min", "logsnr_max", "shift"):
      if not math.isfinite(getattr(self, name)):
        raise ValueError(f"LogSNRSchedule.{name} must be finite, got {getattr(self, name)}")
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(f"logsnr_min={self.logsnr_min} must be below logsnr_max="
                       f"{self.logsnr_max}; set diffusion.logsnr_min < diffusion.logsnr_max")

  @property
  def logsnr_at_t0(self) -> float:
    """The logSNR at t = 0 (the cleanest noise level)."""
    return self.logsnr_max + self.shift

  @property
  def logsnr_at_t1(self) -> float:
    """The logSNR at t = 1 (the noisiest level)."""
    return self.logsnr_min + self.shift

  def __call__(self, t: jax.Array) -> jax.Array:
    """t: any shape, in [0, 1] -> logsnr (float32) of the same shape, decreasing in t."""
    fn = _FORWARD[self.kind]
    return fn(t, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max) + self.shift

  def inverse(self, logsnr: jax.Array) -> jax.Array:
    """logsnr: any shape -> the t (float32) with self(t) == logsnr."""
    fn = _INVERSE[self.kind]
    return fn(jnp.asarray(logsnr, jnp.float32) - self.shift, logsnr_min=self.logsnr_min,
              logsnr_max=self.logsnr_max)


_FORWARD = {"cosine": cosine_logsnr, "linear": linear_logsnr,
            "rectified_flow": rectified_flow_logsnr}
_INVERSE = {"cosine": cosine_t_from_logsnr, "linear": linear_t_from_logsnr,
            "rectified_flow": rectified_flow_t_from_logsnr}


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, dict):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def schedule_from_config(diffusion_cfg: Any, resolution: Optional[float] = None
                         ) -> LogSNRSchedule:
  """Builds the schedule that `diffusion_cfg` (the config's `diffusion` section) describes.

  Args:
    diffusion_cfg: object or dict with keys schedule, logsnr_min, logsnr_max and (for
      shifted_cosine, shifted_rectified_flow) schedule_base_resolution.
    resolution: the spatial resolution of this stage (e.g. its height); needed by the shifted
      schedules.

  Returns:
    A `LogSNRSchedule`: call it on t for logsnr, `.inverse(logsnr)` for t.
  """
  name = _cfg_get(diffusion_cfg, "schedule", "cosine")
  lo = float(_cfg_get(diffusion_cfg, "logsnr_min", -20.0))
  hi = float(_cfg_get(diffusion_cfg, "logsnr_max", 20.0))
  if name not in SCHEDULES:
    raise ValueError(f"diffusion.schedule={name!r} is not one of {SCHEDULES}")
  if name == "linear":
    return LogSNRSchedule("linear", lo, hi)
  if name in ("cosine", "rectified_flow"):
    return LogSNRSchedule(name, lo, hi)
  if resolution is None:
    raise ValueError(f"diffusion.schedule={name!r} needs the stage resolution: call "
                     "schedule_from_config(cfg.diffusion, resolution=<height>)")
  base = float(_cfg_get(diffusion_cfg, "schedule_base_resolution", 64))
  kind = "cosine" if name == "shifted_cosine" else "rectified_flow"
  return LogSNRSchedule(kind, lo, hi, resolution_shift(float(resolution), base))


def time_grid(num_steps: int) -> np.ndarray:
  """The sampling time grid t_i = i / N, i = 0..N (float32 [N + 1])."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  return (np.arange(num_steps + 1) / num_steps).astype(np.float32)
