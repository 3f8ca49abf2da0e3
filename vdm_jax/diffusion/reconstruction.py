"""Sampling conditioned on an observation: reconstruction guidance and the replacement method.

VDM (Ho et al. 2022, section 3.1) samples x = [x_a, x_b] given an observation of x_a from a model
trained on x alone. An `Observation` describes what is seen, y = A(x): A is the identity or a
spatial average-pool by an integer `factor` (y = down(x), for super-resolution), and a `mask`
(1 = observed) selects which entries of y count (frames [B, T] or entries [B, T, H, W, C]).

Replacement (the baseline): at every step the observed part of z_s is replaced by a fresh draw
of q(z_s | x_a) = N(alpha_s x_a, sigma_s^2 I); the model's x^_b is used unmodified, and the final
sample carries x_a exactly. It needs A = identity.

Reconstruction guidance (VDM eq. 7):
  x~_b = x^_b - (w_r alpha_t / 2) grad_{z_b} ||y - A(x^(z_t))||^2_mask,    x~_a = x_a,
and for a downsampling A (VDM's SR form) the whole x^ is corrected with grad_{z_t}. The sampler
then steps with x~ and the eps it implies, eps~ = (z_t - alpha_t x~) / sigma_t.

With classifier-free guidance the corrected x^ is the guided (and thresholded) prediction, and
the gradient is that of the same guided prediction: x~ then moves exactly the x^ the sampler
uses toward the observation, and the value and gradient come from one forward and one backward
pass of the batched [cond; uncond] call (the conditional-only gradient would need a backward
through that same call, so it would save nothing).

Shapes: samples [B, T, H, W, C] (any [B, ...] with two spatial axes after the frame axis for
factor > 1); observation values have the shape of A(x).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import guidance as guid
from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.schedules import alpha_sigma, broadcast_logsnr

OBSERVATION_METHODS = ("reconstruction", "replacement")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Observation:
  """What is observed of a sample x [B, T, H, W, C].

  Attributes:
    values: y, the observed values, shaped like A(x): [B, T, H, W, C] for factor 1, else
      [B, T, H / factor, W / factor, C]. Entries outside the mask are ignored.
    mask: 1 (or True) where y is observed; a leading-dims prefix of y's shape ([B, T] for
      whole frames, [B, T, H', W', C] for entries), broadcast over the rest. None: all of y.
    factor: the spatial average-pool factor of A (1 = identity). Static under jit.
  """
  values: jax.Array
  mask: Optional[jax.Array] = None
  factor: int = dataclasses.field(default=1, metadata=dict(static=True))


def check_observation_method(method: str) -> None:
  if method not in OBSERVATION_METHODS:
    raise ValueError(f"observation_method={method!r} is not one of {OBSERVATION_METHODS}")


def downsample(x: jax.Array, factor: int) -> jax.Array:
  """Spatial average pooling of x [B, T, H, W, C] by `factor` -> [B, T, H/f, W/f, C]."""
  if factor == 1:
    return x
  b, t, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"frames of {h}x{w} do not divide into {factor}x{factor} blocks")
  return x.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


def observe(observation: Observation, x: jax.Array) -> jax.Array:
  """A(x): the observation operator applied to a sample x [B, T, H, W, C]."""
  if x.ndim != 5 and observation.factor != 1:
    raise ValueError(f"a downsampling observation needs samples [B, T, H, W, C], got {x.shape}")
  return downsample(x, int(observation.factor))


def expanded_mask(observation: Observation) -> jax.Array:
  """The mask broadcast to the values' shape, float32 (all ones when mask is None)."""
  y = observation.values
  if observation.mask is None:
    return jnp.ones(y.shape, jnp.float32)
  m = jnp.asarray(observation.mask).astype(jnp.float32)
  if m.ndim > y.ndim or tuple(y.shape[:m.ndim]) != tuple(m.shape):
    raise ValueError(f"observation mask of shape {m.shape} must be a leading-dims prefix of "
                     f"the observed values' shape {y.shape} (e.g. frames [B, T])")
  return jnp.broadcast_to(m.reshape(m.shape + (1,) * (y.ndim - m.ndim)), y.shape)


def check_observation(observation: Observation, shape) -> None:
  """Raises ValueError unless `observation` fits samples of `shape` [B, ...]."""
  factor = int(observation.factor)
  if factor < 1:
    raise ValueError(f"observation factor must be a positive integer, got {factor}")
  shape = tuple(shape)
  want = shape if factor == 1 else (
      shape[:2] + (shape[2] // factor, shape[3] // factor) + shape[4:])
  if factor > 1 and (len(shape) != 5 or shape[2] % factor or shape[3] % factor):
    raise ValueError(f"samples {shape} cannot be downsampled by {factor}: need "
                     "[B, T, H, W, C] with H and W multiples of the factor")
  if tuple(observation.values.shape) != want:
    raise ValueError(f"observation values have shape {tuple(observation.values.shape)}; samples "
                     f"{shape} observed with factor {factor} need {want}")
  expanded_mask(observation)  # checks the mask's shape


def reconstruction_error(observation: Observation, x: jax.Array) -> jax.Array:
  """||y - A(x)||^2 over the observed entries, per example: x [B, ...] -> [B]."""
  r = expanded_mask(observation) * (observation.values - observe(observation, x))
  return jnp.sum(jnp.square(r).reshape(r.shape[0], -1), axis=1)


def sample_space_mask(observation: Observation) -> Optional[jax.Array]:
  """The observed part x_a as a mask over the sample (float, values' shape), or None when the
  observation is not of entries of x (factor > 1)."""
  return expanded_mask(observation) if int(observation.factor) == 1 else None


def reconstruction_guided_prediction(
    *, model_fn: guid.ModelFn, z: jax.Array, logsnr: jax.Array, prediction: str,
    observation: Observation, weight: Any, cond: Any = None, uncond: Any = None,
    guidance_weight: Any = 0.0, clip: str = "none", dynamic_percentile: Any = 0.995
) -> Tuple[jax.Array, jax.Array]:
  """(x~, eps~) at z [B, ...], logsnr [B]: the guided, thresholded x^ corrected by
  reconstruction guidance with weight w_r = `weight` (scalar or [B]), and the eps it implies.

  x~ = x^ - (w_r alpha_t / 2) grad_z ||y - A(x^(z))||^2 (restricted to z_b, and x~_a = x_a,
  when the observation is a mask over x). Costs one forward and one backward pass.
  """
  def loss(z_in):
    x, _ = guid.predict_x_and_eps(
        model_fn=model_fn, z=z_in, logsnr=logsnr, prediction=prediction, cond=cond,
        uncond=uncond, guidance_weight=guidance_weight, clip=clip,
        dynamic_percentile=dynamic_percentile)
    return jnp.sum(reconstruction_error(observation, x)), x

  grad, x = jax.grad(loss, has_aux=True)(z)
  alpha_t, _ = alpha_sigma(broadcast_logsnr(logsnr, z))
  w = broadcast_logsnr(jnp.asarray(weight, jnp.float32), z)
  step = (0.5 * w * alpha_t * grad).astype(x.dtype)
  mask = sample_space_mask(observation)
  if mask is None:
    x_tilde = x - step
  else:
    x_tilde = jnp.where(mask > 0, observation.values.astype(x.dtype), x - (1.0 - mask) * step)
  eps = param.predict_eps_from_x(z=z, x=x_tilde, logsnr=logsnr)
  return x_tilde, eps


def replace_observed(*, z: jax.Array, observation: Observation, logsnr: jax.Array,
                     noise: jax.Array) -> jax.Array:
  """The replacement step: z [B, ...] with its observed part set to a draw of q(z | x_a),
  alpha x_a + sigma noise (noise [B, ...] standard normal); logsnr [B]."""
  mask = sample_space_mask(observation)
  if mask is None:
    raise ValueError("the replacement method needs an observation of entries of x (factor 1); "
                     "use reconstruction guidance for a downsampled observation")
  alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
  fresh = alpha * observation.values.astype(z.dtype) + sigma * noise
  return jnp.where(mask > 0, fresh.astype(z.dtype), z)


def keep_observed(*, x: jax.Array, observation: Observation) -> jax.Array:
  """x [B, ...] with the observed part replaced by x_a (identity for factor > 1)."""
  mask = sample_space_mask(observation)
  if mask is None:
    return x
  return jnp.where(mask > 0, observation.values.astype(x.dtype), x)


def observation_step_fns(*, observation: Observation, method: str, weight: Any,
                         model_fn: guid.ModelFn, prediction: str, cond: Any = None,
                         uncond: Any = None, clip: str = "none",
                         dynamic_percentile: Any = 0.995
                         ) -> Callable[..., Tuple[jax.Array, jax.Array]]:
  """predict(z, logsnr, guidance_weight) -> (x, eps) for one sampling step under `method`:
  the reconstruction-guided prediction, or (replacement) the model's own prediction."""
  check_observation_method(method)

  def predict(z, logsnr, guidance_weight):
    kwargs = dict(model_fn=model_fn, z=z, logsnr=logsnr, prediction=prediction, cond=cond,
                  uncond=uncond, guidance_weight=guidance_weight, clip=clip,
                  dynamic_percentile=dynamic_percentile)
    if method == "reconstruction":
      return reconstruction_guided_prediction(observation=observation, weight=weight, **kwargs)
    return guid.predict_x_and_eps(**kwargs)
  return predict
