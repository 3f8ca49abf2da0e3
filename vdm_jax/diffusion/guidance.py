"""Classifier-free guidance, guidance-weight schedules and x-prediction thresholding.

Guidance (Ho & Salimans 2022) combines a conditional and an unconditional prediction as
  eps_guided = (1 + w) eps_cond - w eps_uncond,
so w = 0 is the conditional model. For a fixed z the maps between eps, x, v and the flow
velocity u are affine (e.g. x = (z - sigma eps) / alpha), and the combination's coefficients sum
to 1, so the same combination applied to x, v or u predictions gives exactly the x, v and u of
eps_guided. We therefore combine the raw model outputs (in the model's own parameterization, the
best-conditioned place) and convert once; `combine_guidance` is the formula, valid in any of the
four spaces.

Imagen Video's oscillating guidance: a constant high weight for the first `const_steps` sampling
steps, then alternating between the high weight and a low weight (e.g. 15 and 1) on successive
steps, which keeps text alignment while limiting saturation artifacts.

Thresholding (Imagen, Saharia et al. 2022) acts on the x prediction inside sampling:
  static   clip x to [-1, 1] (or to per-entry bounds `clip_range` = (lo, hi), e.g. when the
           sampled quantity is a scaled residual over a known video);
  dynamic  s = the p-th quantile of |x| per example, s = max(s, 1), x = clip(x, -s, s) / s.
The sampler recomputes eps from the thresholded x so the step stays consistent.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.schedules import broadcast_logsnr

GUIDANCE_SCHEDULES = ("constant", "oscillating")
CLIPS = ("none", "static", "dynamic")

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def check_guidance_schedule(schedule: str) -> None:
  if schedule not in GUIDANCE_SCHEDULES:
    raise ValueError(f"guidance_schedule={schedule!r} is not one of {GUIDANCE_SCHEDULES} "
                     "(set sample.guidance_schedule)")


def check_clip(clip: str) -> None:
  if clip not in CLIPS:
    raise ValueError(f"clip={clip!r} is not one of {CLIPS} (set sample.clip)")


def is_concrete_zero(weight: Any) -> bool:
  """True when `weight` is a Python/NumPy number equal to 0 (known before tracing)."""
  if isinstance(weight, (int, float, np.number)) or (
      isinstance(weight, np.ndarray) and weight.ndim == 0):
    return float(weight) == 0.0
  return False


def guidance_weight_at(step: Any, *, weight: Any, schedule: str = "constant",
                       low: Any = 1.0, const_steps: int = 0) -> Any:
  """The guidance weight of sampling step `step` (0 = the first, noisiest step).

  'constant' returns `weight` unchanged. 'oscillating' returns `weight` for steps
  < const_steps, then `weight` and `low` alternately (weight on even offsets from const_steps).
  `step` may be a traced integer.
  """
  check_guidance_schedule(schedule)
  if schedule == "constant":
    return weight
  if const_steps < 0:
    raise ValueError(f"const_steps must be >= 0, got {const_steps}")
  step = jnp.asarray(step)
  high = (step < const_steps) | ((step - const_steps) % 2 == 0)
  return jnp.where(high, jnp.asarray(weight, jnp.float32), jnp.asarray(low, jnp.float32))


def combine_guidance(*, cond_out: jax.Array, uncond_out: jax.Array, weight: Any) -> jax.Array:
  """(1 + w) cond_out - w uncond_out; w scalar or per-example [B]; arrays [B, ...]."""
  if cond_out.shape != uncond_out.shape:
    raise ValueError(f"conditional and unconditional outputs differ in shape: "
                     f"{cond_out.shape} vs {uncond_out.shape}")
  w = broadcast_logsnr(jnp.asarray(weight, jnp.float32), cond_out).astype(cond_out.dtype)
  return cond_out + w * (cond_out - uncond_out)


def _same_layout(cond: Any, uncond: Any) -> bool:
  """Whether cond and uncond are pytrees of the same structure and leaf shapes/dtypes."""
  if cond is None or uncond is None:
    return False
  if jax.tree.structure(cond) != jax.tree.structure(uncond):
    return False
  return all(jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
             for a, b in zip(jax.tree.leaves(cond), jax.tree.leaves(uncond)))


def guided_model_output(*, model_fn: ModelFn, z: jax.Array, logsnr: jax.Array, cond: Any = None,
                        uncond: Any = None, weight: Any = 0.0) -> jax.Array:
  """The (guided) model output at z [B, ...], logsnr [B].

  Without `uncond`, or with a weight that is a concrete 0, this is model_fn(z, logsnr, cond)
  alone. Otherwise cond and uncond (pytrees with leading batch dim B) are evaluated as one
  batched call on [cond; uncond] (2B examples) when their layouts match, else as two calls,
  and combined with `combine_guidance`.
  """
  if uncond is None:
    if isinstance(weight, (int, float, np.number)) and not is_concrete_zero(weight):
      raise ValueError(f"guidance weight {weight} needs an unconditional input: pass uncond "
                       "(e.g. the null text embedding), or set the guidance weight to 0")
    return model_fn(z, logsnr, cond)
  if is_concrete_zero(weight):
    return model_fn(z, logsnr, cond)
  batch = z.shape[0]
  if _same_layout(cond, uncond):
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
    out = model_fn(jnp.concatenate([z, z], axis=0), jnp.concatenate([logsnr, logsnr]), both)
    cond_out, uncond_out = out[:batch], out[batch:]
  else:
    cond_out = model_fn(z, logsnr, cond)
    uncond_out = model_fn(z, logsnr, uncond)
  return combine_guidance(cond_out=cond_out, uncond_out=uncond_out, weight=weight)


def static_threshold(x: jax.Array, clip_range: Any = None) -> jax.Array:
  """Clips x to [-1, 1], or to `clip_range` = (lo, hi) (arrays broadcastable to x)."""
  if clip_range is None:
    return jnp.clip(x, -1.0, 1.0)
  lo, hi = clip_range
  return jnp.clip(x, jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype))


def concrete_float(value: Any):
  """`value` as a Python float when it is known before tracing (a number or a concrete
  scalar array), else None (a traced value cannot be checked here)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value) if np.ndim(value) == 0 else None
  except (TypeError, ValueError):
    return None


def check_percentile(percentile: Any) -> None:
  """Refuses a dynamic-thresholding percentile outside (0, 1]: the Imagen paper writes a
  percent (99.5), this library takes the fraction (0.995); jnp.quantile would clamp 99.5 to 1
  silently."""
  p = concrete_float(percentile)
  if p is not None and not 0.0 < p <= 1.0:
    hint = f" (a percent? {p:g}% is {p / 100:g})" if 1.0 < p <= 100.0 else ""
    raise ValueError(f"dynamic thresholding percentile={p:g} must be a fraction in (0, 1]"
                     f"{hint}")


def dynamic_threshold(x: jax.Array, percentile: Any = 0.995) -> jax.Array:
  """Imagen's dynamic thresholding of x [B, ...]: per example s = max(quantile_p(|x|), 1);
  `percentile` is a fraction in (0, 1] (0.995, the paper's 99.5 percent)."""
  check_percentile(percentile)
  flat = jnp.abs(x.reshape(x.shape[0], -1)).astype(jnp.float32)
  s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)  # [B]
  s = broadcast_logsnr(s, x).astype(x.dtype)
  return jnp.clip(x, -s, s) / s


def threshold_x(x: jax.Array, clip: str, dynamic_percentile: Any = 0.995,
                clip_range: Any = None) -> jax.Array:
  """Applies clip = 'none' | 'static' | 'dynamic' to an x prediction [B, ...]; static clipping
  to `clip_range` = (lo, hi) when given (dynamic thresholding has no such form)."""
  check_clip(clip)
  if clip == "static":
    return static_threshold(x, clip_range)
  if clip_range is not None and clip == "dynamic":
    raise ValueError("clip_range (per-entry bounds) works with clip='static' or 'none', not "
                     "'dynamic'")
  if clip == "dynamic":
    return dynamic_threshold(x, dynamic_percentile)
  return x


def predict_x_and_eps(*, model_fn: ModelFn, z: jax.Array, logsnr: jax.Array, prediction: str,
                      cond: Any = None, uncond: Any = None, guidance_weight: Any = 0.0,
                      clip: str = "none", dynamic_percentile: Any = 0.995,
                      clip_range: Any = None) -> Tuple[jax.Array, jax.Array]:
  """Guided, thresholded (x, eps) predictions at z [B, ...], logsnr [B].

  eps is recomputed from the thresholded x when clip != 'none'. `clip_range` = (lo, hi):
  the bounds of static clipping (default [-1, 1]).
  """
  check_clip(clip)
  out = guided_model_output(model_fn=model_fn, z=z, logsnr=logsnr, cond=cond, uncond=uncond,
                            weight=guidance_weight)
  if out.shape != z.shape:
    raise ValueError(f"model_fn returned shape {out.shape}; expected {z.shape}")
  x, eps = param.to_x_and_eps(prediction=prediction, model_output=out, z=z, logsnr=logsnr)
  if clip != "none":
    x = threshold_x(x, clip, dynamic_percentile, clip_range)
    eps = param.predict_eps_from_x(z=z, x=x, logsnr=logsnr)
  return x, eps
