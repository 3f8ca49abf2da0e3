"""Conversions among the eps, x, v and flow parameterizations (Salimans & Ho 2022; rectified
flow / flow matching, Liu et al. 2023, Lipman et al. 2023).

With z = alpha x + sigma eps (alpha^2 + sigma^2 = 1) and v = alpha eps - sigma x:
  x = alpha z - sigma v          eps = sigma z + alpha v
  x = (z - sigma eps) / alpha    eps = (z - alpha x) / sigma
  v = (alpha z - x) / sigma      v = (eps - sigma z) / alpha
Every function takes z-like arrays [B, ...] and logsnr [B] (or a scalar), keyword-only. Divisions
by alpha or sigma are written with exp(+-logsnr / 2) and sqrt(1 + exp(+-logsnr)) (as the
diffusion_distillation code does), so no tiny alpha or sigma is formed and then divided by;
the conversions from eps to x at very low logSNR (and from x to eps at very high logSNR) remain
ill-conditioned by nature: they amplify errors by exp(|logsnr| / 2).

Flow ('flow'): the velocity u = eps - x of the rectified-flow path z_rf = (1 - t) x + t eps, which
is the VP z rescaled: z_rf = z / (alpha + sigma), t = sigma / (alpha + sigma). The model still
takes the VP z and its logsnr; from x = z_rf - t u and eps = z_rf + (1 - t) u:
  x = (z - sigma u) / (alpha + sigma)      eps = (z + alpha u) / (alpha + sigma)
  u = (z - (alpha + sigma) x) / sigma      u = ((alpha + sigma) eps - z) / alpha
  u = (sigma - alpha) z + (alpha + sigma) v      v = ((alpha - sigma) z + u) / (alpha + sigma)
alpha + sigma lies in [1, sqrt 2], so the maps between u and (x, eps) or v are well conditioned
at every logsnr (u from x or eps alone inherits the conditioning of eps from x, x from eps).
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from vdm_jax.diffusion.schedules import alpha_sigma, broadcast_logsnr

PREDICTIONS = ("v", "eps", "x", "flow")


def _check(a: jax.Array, b: jax.Array, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def predict_x_from_eps(*, z: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """x = (z - sigma eps) / alpha = sqrt(1 + e^-logsnr) z - e^(-logsnr/2) eps."""
  _check(z, eps, "z and eps")
  l = broadcast_logsnr(logsnr, z)
  return jnp.sqrt(1.0 + jnp.exp(-l)) * z - jnp.exp(-0.5 * l) * eps


def predict_eps_from_x(*, z: jax.Array, x: jax.Array, logsnr: jax.Array) -> jax.Array:
  """eps = (z - alpha x) / sigma = sqrt(1 + e^logsnr) z - e^(logsnr/2) x."""
  _check(z, x, "z and x")
  l = broadcast_logsnr(logsnr, z)
  return jnp.sqrt(1.0 + jnp.exp(l)) * z - jnp.exp(0.5 * l) * x


def _checked_alpha_sigma(a: jax.Array, b: jax.Array, logsnr: jax.Array, what: str):
  """(alpha, sigma) of `logsnr` broadcast against `a`, after checking that a and b match."""
  _check(a, b, what)
  return alpha_sigma(broadcast_logsnr(logsnr, a))


def predict_x_from_v(*, z: jax.Array, v: jax.Array, logsnr: jax.Array) -> jax.Array:
  """x = alpha z - sigma v."""
  alpha, sigma = _checked_alpha_sigma(z, v, logsnr, "z and v")
  return alpha * z - sigma * v


def predict_eps_from_v(*, z: jax.Array, v: jax.Array, logsnr: jax.Array) -> jax.Array:
  """eps = sigma z + alpha v."""
  alpha, sigma = _checked_alpha_sigma(z, v, logsnr, "z and v")
  return sigma * z + alpha * v


def predict_v_from_x(*, z: jax.Array, x: jax.Array, logsnr: jax.Array) -> jax.Array:
  """v = (alpha z - x) / sigma = e^(logsnr/2) z - sqrt(1 + e^logsnr) x."""
  _check(z, x, "z and x")
  l = broadcast_logsnr(logsnr, z)
  return jnp.exp(0.5 * l) * z - jnp.sqrt(1.0 + jnp.exp(l)) * x


def predict_v_from_eps(*, z: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """v = (eps - sigma z) / alpha = sqrt(1 + e^-logsnr) eps - e^(-logsnr/2) z."""
  _check(z, eps, "z and eps")
  l = broadcast_logsnr(logsnr, z)
  return jnp.sqrt(1.0 + jnp.exp(-l)) * eps - jnp.exp(-0.5 * l) * z


def predict_v_from_x_and_eps(*, x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """v = alpha eps - sigma x."""
  alpha, sigma = _checked_alpha_sigma(x, eps, logsnr, "x and eps")
  return alpha * eps - sigma * x


def predict_z_from_x_and_eps(*, x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """z = alpha x + sigma eps (the forward process)."""
  alpha, sigma = _checked_alpha_sigma(x, eps, logsnr, "x and eps")
  return alpha * x + sigma * eps


def predict_x_from_flow(*, z: jax.Array, u: jax.Array, logsnr: jax.Array) -> jax.Array:
  """x = z_rf - t u = (z - sigma u) / (alpha + sigma)."""
  alpha, sigma = _checked_alpha_sigma(z, u, logsnr, "z and u")
  return (z - sigma * u) / (alpha + sigma)


def predict_eps_from_flow(*, z: jax.Array, u: jax.Array, logsnr: jax.Array) -> jax.Array:
  """eps = z_rf + (1 - t) u = (z + alpha u) / (alpha + sigma)."""
  alpha, sigma = _checked_alpha_sigma(z, u, logsnr, "z and u")
  return (z + alpha * u) / (alpha + sigma)


def predict_flow_from_x_and_eps(*, x: jax.Array, eps: jax.Array) -> jax.Array:
  """u = eps - x (the rectified-flow velocity d z_rf / dt; independent of the noise level)."""
  _check(x, eps, "x and eps")
  return eps - x


def predict_flow_from_x(*, z: jax.Array, x: jax.Array, logsnr: jax.Array) -> jax.Array:
  """u = (z_rf - x) / t = (z - (alpha + sigma) x) / sigma
       = sqrt(1 + e^logsnr) z - (1 + e^(logsnr/2)) x."""
  _check(z, x, "z and x")
  l = broadcast_logsnr(logsnr, z)
  return jnp.sqrt(1.0 + jnp.exp(l)) * z - (1.0 + jnp.exp(0.5 * l)) * x


def predict_flow_from_eps(*, z: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """u = (eps - z_rf) / (1 - t) = ((alpha + sigma) eps - z) / alpha
       = (1 + e^(-logsnr/2)) eps - sqrt(1 + e^-logsnr) z."""
  _check(z, eps, "z and eps")
  l = broadcast_logsnr(logsnr, z)
  return (1.0 + jnp.exp(-0.5 * l)) * eps - jnp.sqrt(1.0 + jnp.exp(-l)) * z


def predict_flow_from_v(*, z: jax.Array, v: jax.Array, logsnr: jax.Array) -> jax.Array:
  """u = eps - x = (sigma - alpha) z + (alpha + sigma) v."""
  alpha, sigma = _checked_alpha_sigma(z, v, logsnr, "z and v")
  return (sigma - alpha) * z + (alpha + sigma) * v


def predict_v_from_flow(*, z: jax.Array, u: jax.Array, logsnr: jax.Array) -> jax.Array:
  """v = alpha eps - sigma x = ((alpha - sigma) z + u) / (alpha + sigma)."""
  alpha, sigma = _checked_alpha_sigma(z, u, logsnr, "z and u")
  return ((alpha - sigma) * z + u) / (alpha + sigma)


def check_prediction(prediction: str) -> None:
  """Raises a ValueError naming the choices unless prediction is 'v', 'eps', 'x' or 'flow'."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction={prediction!r} is not one of {PREDICTIONS} "
                     "(set diffusion.prediction)")


def to_x_and_eps(*, prediction: str, model_output: jax.Array, z: jax.Array,
                 logsnr: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Converts a model output in the `prediction` parameterization to (x, eps), both [B, ...]."""
  check_prediction(prediction)
  if prediction == "v":
    return (predict_x_from_v(z=z, v=model_output, logsnr=logsnr),
            predict_eps_from_v(z=z, v=model_output, logsnr=logsnr))
  if prediction == "eps":
    return predict_x_from_eps(z=z, eps=model_output, logsnr=logsnr), model_output
  if prediction == "flow":
    return (predict_x_from_flow(z=z, u=model_output, logsnr=logsnr),
            predict_eps_from_flow(z=z, u=model_output, logsnr=logsnr))
  return model_output, predict_eps_from_x(z=z, x=model_output, logsnr=logsnr)


def from_x_and_eps(*, prediction: str, x: jax.Array, eps: jax.Array,
                   logsnr: jax.Array) -> jax.Array:
  """The `prediction`-space quantity (the model's regression target) for a pair (x, eps)."""
  check_prediction(prediction)
  if prediction == "v":
    return predict_v_from_x_and_eps(x=x, eps=eps, logsnr=logsnr)
  if prediction == "flow":
    return predict_flow_from_x_and_eps(x=x, eps=eps)
  return eps if prediction == "eps" else x
