"""Noise priors correlated across frames (PYoCo): statistics, and their use in the loss and the
samplers (a Gaussian video sampled with its exact denoiser under the prior)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vdm_jax import diffusion as d
from vdm_jax.diffusion import noise

SCHEDULE = d.LogSNRSchedule("cosine", -20.0, 20.0)


def _frame_covariance(prior, alpha, frames):
  """The prior's frame-by-frame covariance, from its definition in vdm_jax/diffusion/noise.py."""
  i, j = np.meshgrid(np.arange(frames), np.arange(frames), indexing="ij")
  if prior == "mixed":
    return np.where(i == j, 1.0, alpha ** 2 / (1 + alpha ** 2))
  if prior == "progressive":
    return (alpha / np.sqrt(1 + alpha ** 2)) ** np.abs(i - j)
  return np.eye(frames)


@pytest.mark.parametrize("prior, alpha", [("mixed", 1.0), ("mixed", 2.0), ("progressive", 2.0)])
def test_noise_prior_has_unit_variance_and_its_frame_correlation(prior, alpha):
  eps = np.asarray(noise.video_noise(jax.random.key(0), (6000, 5, 2, 2, 1), prior=prior,
                                     alpha=alpha))
  frames = eps.transpose(1, 0, 2, 3, 4).reshape(5, -1)
  np.testing.assert_allclose(np.cov(frames), _frame_covariance(prior, alpha, 5), atol=0.03)
  np.testing.assert_allclose(frames.mean(1), 0.0, atol=0.03)


def test_independent_prior_and_frameless_shapes_are_plain_normals():
  key = jax.random.key(3)
  np.testing.assert_array_equal(noise.video_noise(key, (2, 4, 3, 3, 1)),
                                jax.random.normal(key, (2, 4, 3, 3, 1)))
  for shape in [(5, 7), (2, 1, 3, 3, 1)]:         # no frame axis; a one-frame clip
    np.testing.assert_array_equal(noise.video_noise(key, shape, prior="mixed"),
                                  jax.random.normal(key, shape))
  cfg = ml_collections.ConfigDict(dict(noise_prior="independent", noise_prior_alpha=1.0))
  assert noise.noise_fn_from_config(cfg) is None
  assert noise.noise_fn_from_config(ml_collections.ConfigDict()) is None   # older configs
  with pytest.raises(ValueError, match="not one of"):
    noise.video_noise(key, (2, 3, 1), prior="pink")
  with pytest.raises(ValueError, match="alpha > 0"):
    noise.video_noise(key, (2, 3, 1), prior="mixed", alpha=0.0)


def test_loss_draws_its_noise_from_noise_fn():
  x = jnp.ones((3, 4, 2, 2, 1))
  zero_noise = lambda key, shape, dtype: jnp.zeros(shape, dtype)
  seen = {}

  def model_fn(z, logsnr, cond):
    seen["z"], seen["logsnr"] = z, logsnr
    return jnp.zeros_like(z)
  d.diffusion_loss(model_fn=model_fn, x=x, key=jax.random.key(0), schedule=SCHEDULE,
                   prediction="eps", noise_fn=zero_noise)
  alpha = np.sqrt(jax.nn.sigmoid(np.asarray(seen["logsnr"])))
  np.testing.assert_allclose(seen["z"], alpha[:, None, None, None, None] * x, rtol=1e-5)


@pytest.mark.parametrize("sampler, prior, eta", [("ddim", "mixed", 1.0),
                                                 ("ddpm", "progressive", 1.0),
                                                 ("ddim", "progressive", 0.0)])
def test_sampling_a_gaussian_video_with_its_exact_denoiser_under_the_prior(sampler, prior, eta):
  """x ~ N(0, s^2 I) over 3 frames, z_t = alpha x + sigma eps with eps ~ N(0, C) (the prior):
  E[x | z] = s^2 alpha (alpha^2 s^2 I + sigma^2 C)^-1 z per pixel. Sampling that draws z_1 and
  its step noise from the same prior returns x with covariance s^2 I; drawing them i.i.d.
  instead does not (deterministic DDIM, eta 0: only z_1 carries the prior)."""
  s2, frames, alpha_p = 0.25, 3, 2.0
  cov = jnp.asarray(_frame_covariance(prior, alpha_p, frames), jnp.float32)

  def denoiser(z, logsnr, cond=None):
    a2 = jax.nn.sigmoid(logsnr)[:, None, None]                      # [B, 1, 1]
    m = s2 * jnp.sqrt(a2) * jnp.linalg.inv(a2 * s2 * jnp.eye(frames) + (1 - a2) * cov)
    return jnp.einsum("bij,bj...->bi...", m, z)

  def noise_fn(key, shape, dtype):
    return noise.video_noise(key, shape, dtype, prior=prior, alpha=alpha_p)

  shape = (4000, frames, 1, 1, 1)
  for fn, ok in [(noise_fn, True), (None, False)]:
    x = d.sample(model_fn=denoiser, shape=shape, key=jax.random.key(1), num_steps=64,
                 schedule=SCHEDULE, sampler=sampler, eta=eta, prediction="x", noise_fn=fn)
    got = np.cov(np.asarray(x).reshape(len(x), frames).T)
    close = np.allclose(got, s2 * np.eye(frames), atol=0.03)
    assert close == ok, (fn, got)
