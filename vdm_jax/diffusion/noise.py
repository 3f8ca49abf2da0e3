"""Noise priors for video diffusion: Gaussian noise correlated across frames (PYoCo).

Ge et al. 2023 ("Preserve Your Own Correlation: A Noise Prior for Video Diffusion Models")
replace the i.i.d. noise of a video diffusion model by noise whose frames share a component,
in training (the eps of z_t = alpha_t x + sigma_t eps) and in sampling (z_1 and every fresh
draw of a stochastic sampler), so that the model need not build temporal coherence out of
independent noise. Every element keeps variance 1; for videos [B, T, ...] (frames on axis 1):

  independent   eps_i ~ N(0, I), i.i.d. (the usual diffusion model)
  mixed         eps_i = (alpha * s + n_i) / sqrt(1 + alpha^2), one s per video:
                corr(eps_i, eps_j) = alpha^2 / (1 + alpha^2) for i != j
  progressive   eps_0 = n_0, eps_i = (alpha * eps_{i-1} + n_i) / sqrt(1 + alpha^2):
                corr(eps_i, eps_j) = (alpha / sqrt(1 + alpha^2)) ** |i - j|

with s, n_i ~ N(0, I) i.i.d. Arrays of fewer than 3 dimensions (no frame axis) and clips of
one frame get independent noise.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

NOISE_PRIORS = ("independent", "mixed", "progressive")
NoiseFn = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]


def check_noise_prior(prior: str, alpha: float) -> None:
  if prior not in NOISE_PRIORS:
    raise ValueError(f"noise prior {prior!r} is not one of {NOISE_PRIORS}")
  if prior != "independent" and not float(alpha) > 0.0:
    raise ValueError(f"noise prior {prior!r} needs alpha > 0, got {alpha}")


def video_noise(key: jax.Array, shape, dtype=jnp.float32, *, prior: str = "independent",
                alpha: float = 1.0) -> jax.Array:
  """Standard-normal noise of `shape` ([B, T, ...]) under noise prior `prior` (see above)."""
  check_noise_prior(prior, alpha)
  shape = tuple(shape)
  if prior == "independent" or len(shape) < 3 or shape[1] < 2:
    return jax.random.normal(key, shape, dtype)
  own_key, shared_key = jax.random.split(key)
  own = jax.random.normal(own_key, shape, jnp.float32)
  norm = 1.0 / jnp.sqrt(1.0 + alpha * alpha)
  if prior == "mixed":
    shared = jax.random.normal(shared_key, shape[:1] + (1,) + shape[2:], jnp.float32)
    return ((alpha * shared + own) * norm).astype(dtype)

  def step(prev, n):
    cur = (alpha * prev + n) * norm
    return cur, cur
  first = own[:, 0]
  _, rest = jax.lax.scan(step, first, jnp.moveaxis(own[:, 1:], 1, 0))
  return jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1).astype(dtype)


def noise_fn_from_config(diffusion_config) -> Optional[NoiseFn]:
  """(key, shape, dtype) -> noise for a config's `diffusion` section (keys `noise_prior`,
  `noise_prior_alpha`); None for the independent prior (callers then draw plain normals)."""
  prior = str(diffusion_config.get("noise_prior", "independent"))
  alpha = float(diffusion_config.get("noise_prior_alpha", 1.0))
  check_noise_prior(prior, alpha)
  if prior == "independent":
    return None

  def noise_fn(key, shape, dtype=jnp.float32):
    return video_noise(key, shape, dtype, prior=prior, alpha=alpha)
  return noise_fn


def draw(noise_fn: Optional[NoiseFn], key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """noise_fn(key, shape, dtype), or i.i.d. standard normals without one."""
  if noise_fn is None:
    return jax.random.normal(key, tuple(shape), dtype)
  return noise_fn(key, tuple(shape), dtype)
