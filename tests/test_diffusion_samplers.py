"""Tests for vdm_jax.diffusion.samplers: oracle DDIM, Gaussian-mixture sampling, step identities.

The mixture tests sample with the exact optimal denoiser E[x | z_t] of a 1-D Gaussian mixture, so
any deviation of the sample statistics from the mixture's comes from the sampler alone.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion as d

import mixture_testlib as mix

SCHEDULE = d.LogSNRSchedule("cosine", -20.0, 20.0)

# --- a 1-D two-component Gaussian mixture (mixture_testlib) and its closed-form denoiser -------

def mixture_denoiser(z, logsnr, cond=None):
  """E[x | z_t] for x ~ sum_k w_k N(mu_k, s_k^2), z_t = alpha x + sigma eps; z: [B, 1].

  Under component k, z_t ~ N(alpha mu_k, alpha^2 s_k^2 + sigma^2), so the responsibilities are
  gamma_k(z) = w_k N(z; alpha mu_k, v_k) / sum_j w_j N(z; alpha mu_j, v_j), v_k = alpha^2 s_k^2 +
  sigma^2, and the per-component posterior mean (Gaussian conditioning) is
  E[x | z, k] = mu_k + alpha s_k^2 / v_k (z - alpha mu_k). Then E[x | z] = sum_k gamma_k E[x|z,k].
  """
  del cond
  alpha, sigma = d.alpha_sigma(logsnr[:, None])  # [B, 1]
  var = alpha**2 * mix.MIX_SD**2 + sigma**2  # [B, K]
  log_p = np.log(mix.MIX_W) - 0.5 * jnp.log(2 * np.pi * var) - 0.5 * (z - alpha * mix.MIX_MU)**2 / var
  gamma = jax.nn.softmax(log_p, axis=-1)
  mean_k = mix.MIX_MU + alpha * mix.MIX_SD**2 / var * (z - alpha * mix.MIX_MU)
  return jnp.sum(gamma * mean_k, axis=-1, keepdims=True)




NUM_MIX_SAMPLES = 8192
NUM_MIX_STEPS = 200
MIX_SHAPE = (NUM_MIX_SAMPLES, 1)
# eta and the DDPM variance fraction are traced, so one compile serves every setting
# ('interp' with fraction 0 is the 'small' posterior variance, with 1 the 'large' one).
_MIX_DDIM = jax.jit(lambda key, noise, eta: d.sample(
    model_fn=mixture_denoiser, shape=MIX_SHAPE, key=key, num_steps=NUM_MIX_STEPS,
    schedule=SCHEDULE, sampler="ddim", eta=eta, prediction="x", init_noise=noise))
_MIX_DDPM = jax.jit(lambda key, noise, frac: d.sample(
    model_fn=mixture_denoiser, shape=MIX_SHAPE, key=key, num_steps=NUM_MIX_STEPS,
    schedule=SCHEDULE, sampler="ddpm", prediction="x", ddpm_variance="interp",
    ddpm_var_interp=frac, init_noise=noise))
_MIX_NOISE = np.random.default_rng(0).standard_normal(MIX_SHAPE).astype(np.float32)


@pytest.mark.parametrize("sampler,value", [
    ("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("ddpm", 0.5), ("ddpm", 1.0)])
def test_sampling_a_gaussian_mixture_with_its_optimal_denoiser(sampler, value):
  # Tolerances = 4 standard errors of the estimates at 8192 samples (weights 0.005, means
  # 0.002/0.003, stds 0.0014/0.002) plus the sampler's own discretization bias at 200 steps,
  # which we measured with 200k samples to be at most 0.003 (weights, means) and 0.007 (stds:
  # the ancestral 'small' variance shrinks them, 'large' inflates them, by O(1 / steps)).
  fn = _MIX_DDIM if sampler == "ddim" else _MIX_DDPM
  x = np.asarray(fn(jax.random.key(0), _MIX_NOISE, value))
  assert np.all(np.isfinite(x))
  weights, means, stds = mix.mixture_statistics(x)
  np.testing.assert_allclose(weights, mix.MIX_W, atol=0.025)
  np.testing.assert_allclose(means, mix.MIX_MU, atol=0.015)
  np.testing.assert_allclose(stds, mix.MIX_SD, atol=0.015)


def test_ddim_eta_one_samples_like_ddpm_small_variance():
  # The same key draws the same per-step noise, and DDIM(eta=1) is the posterior step.
  key = jax.random.key(11)
  a = np.asarray(_MIX_DDIM(key, _MIX_NOISE, 1.0))
  b = np.asarray(_MIX_DDPM(key, _MIX_NOISE, 0.0))
  np.testing.assert_allclose(a, b, atol=1e-3)
  c = np.asarray(_MIX_DDPM(jax.random.key(12), _MIX_NOISE, 0.0))
  assert np.abs(c - b).max() > 0.1  # a different key gives different samples


def test_mixture_statistics_detect_a_wrong_distribution():
  # The check above can fail: samples from a mixture with other weights or widths do.
  rng = np.random.default_rng(0)
  n = NUM_MIX_SAMPLES
  comp = rng.random(n) < 0.5
  x = np.where(comp, -0.6 + 0.1 * rng.standard_normal(n), 0.5 + 0.2 * rng.standard_normal(n))
  weights, _, _ = mix.mixture_statistics(x)
  assert np.abs(weights - mix.MIX_W).max() > 0.1
  comp = rng.random(n) < 0.3
  x = np.where(comp, -0.6 + 0.13 * rng.standard_normal(n), 0.5 + 0.2 * rng.standard_normal(n))
  _, _, stds = mix.mixture_statistics(x)
  assert abs(stds[0] - 0.1) > 0.02


def _oracle(x, prediction):
  def model_fn(z, logsnr, cond):
    del cond
    if prediction == "x":
      return x
    if prediction == "eps":
      return d.predict_eps_from_x(z=z, x=x, logsnr=logsnr)
    return d.predict_v_from_x(z=z, x=x, logsnr=logsnr)
  return model_fn


@pytest.mark.parametrize("num_steps", [1, 3, 17])
@pytest.mark.parametrize("prediction", ["x", "v", "eps"])
def test_ddim_with_an_oracle_recovers_the_data(num_steps, prediction):
  shape = (3, 2, 3, 3, 1)
  rng = np.random.default_rng(1)
  data = jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  x, traj = d.sample(model_fn=_oracle(data, prediction), shape=shape, key=jax.random.key(2),
                     num_steps=num_steps, schedule=SCHEDULE, prediction=prediction,
                     init_noise=noise, return_trajectory=True)
  np.testing.assert_array_equal(np.asarray(traj[0]), np.asarray(noise))
  chex.assert_shape(traj, (num_steps + 1,) + shape)
  # eps-prediction at logsnr -20 forms x = (z - sigma eps) / alpha, amplifying float32 roundoff
  # by e^10 at the first step; later steps (higher logsnr) shrink that error again.
  np.testing.assert_allclose(np.asarray(x), np.asarray(data),
                             atol=1e-5 if prediction != "eps" or num_steps > 1 else 5e-3)
  np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x))
  # Deterministic DDIM with the true x keeps z_t on the ray z_t = alpha_t x + sigma_t eps*, with
  # eps* the noise implied by z_1. (With eps-prediction the first x = (z - sigma eps) / alpha at
  # logsnr -20 carries float32 roundoff times e^10 ~ 2e-3 into z; hence the looser tolerance.)
  atol = 5e-3 if prediction == "eps" else 1e-4
  grid = d.time_grid(num_steps)[::-1]  # t = 1, ..., 1/N, 0
  eps_star = d.predict_eps_from_x(z=traj[0], x=data, logsnr=SCHEDULE(1.0))
  for i in range(1, num_steps):
    want = d.q_sample(x=data, eps=eps_star, logsnr=jnp.full((3,), SCHEDULE(grid[i])))
    np.testing.assert_allclose(np.asarray(traj[i]), np.asarray(want), atol=atol)


def test_ddim_eta_one_is_the_ancestral_small_variance_step():
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  x = jnp.asarray(rng.uniform(-1.0, 1.0, (4, 6)), jnp.float32)
  lt, ls = jnp.array([-5.0, -1.0, 2.0, 6.0]), jnp.array([-3.0, 0.5, 2.5, 9.0])
  eps = d.predict_eps_from_x(z=z, x=x, logsnr=lt)
  key = jax.random.key(5)
  ddim = d.ddim_step(z_t=z, x_pred=x, eps_pred=eps, logsnr_t=lt, logsnr_s=ls, eta=1.0, key=key)
  ddpm = d.ddpm_step(z_t=z, x_pred=x, logsnr_t=lt, logsnr_s=ls, key=key, variance="small")
  np.testing.assert_allclose(np.asarray(ddim), np.asarray(ddpm), rtol=1e-4, atol=1e-5)
  # eta = 0 is the deterministic update alpha_s x + sigma_s eps.
  alpha_s, sigma_s = d.alpha_sigma(ls[:, None])
  # Intermediate eta: noise of variance eta^2 (1 - r) sigma_s^2, r = SNR_t / SNR_s.
  eta = 0.5
  ddim_half = d.ddim_step(z_t=z, x_pred=x, eps_pred=eps, logsnr_t=lt, logsnr_s=ls, eta=eta,
                          key=key)
  noise = np.asarray(jax.random.normal(key, z.shape), np.float64)
  one_minus_r = 1.0 - np.exp(np.asarray(lt - ls, np.float64))[:, None]
  a_s, s_s = np.asarray(alpha_s, np.float64), np.asarray(sigma_s, np.float64)
  want = (a_s * np.asarray(x) + s_s * np.sqrt(1 - eta**2 * one_minus_r) * np.asarray(eps)
          + s_s * eta * np.sqrt(one_minus_r) * noise)
  np.testing.assert_allclose(np.asarray(ddim_half), want, rtol=1e-5, atol=1e-5)
  ddim0 = d.ddim_step(z_t=z, x_pred=x, eps_pred=eps, logsnr_t=lt, logsnr_s=ls)
  np.testing.assert_allclose(np.asarray(ddim0), np.asarray(alpha_s * x + sigma_s * eps),
                             rtol=1e-6, atol=1e-6)


def test_ddpm_posterior_matches_the_textbook_formula():
  rng = np.random.default_rng(6)
  z = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
  lt, ls = np.array([-4.0, 0.0, 3.0]), np.array([-2.0, 1.0, 8.0])
  a2 = lambda l: 1 / (1 + np.exp(-l))  # alpha^2
  a_t, a_s = np.sqrt(a2(lt))[:, None], np.sqrt(a2(ls))[:, None]
  s2_t, s2_s = (1 - a2(lt))[:, None], (1 - a2(ls))[:, None]
  a_ts = a_t / a_s  # alpha_{t|s}
  s2_ts = s2_t - a_ts**2 * s2_s  # sigma^2_{t|s}
  mean_ref = a_ts * s2_s / s2_t * np.asarray(z) + a_s * s2_ts / s2_t * np.asarray(x)
  small_ref, large_ref = s2_ts * s2_s / s2_t, s2_ts
  for variance, var_ref in (("small", small_ref), ("large", large_ref),
                            ("interp", np.sqrt(small_ref * large_ref))):
    mean, logvar = d.ddpm_posterior(z_t=z, x=x, logsnr_t=jnp.asarray(lt, jnp.float32),
                                    logsnr_s=jnp.asarray(ls, jnp.float32), variance=variance,
                                    var_interp=0.5)
    np.testing.assert_allclose(np.asarray(mean), mean_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(logvar)), var_ref, rtol=1e-4)


def _cond_model(z, logsnr, cond):
  """A v-model with a conditional shift, big enough that dynamic thresholding acts."""
  return 0.2 * z - 2.0 * cond["y"][:, None, None, None, None] * jnp.tanh(logsnr + 3.0)[
      :, None, None, None, None]


SMALL_SHAPE = (2, 2, 4, 4, 1)
COND = {"y": jnp.array([1.0, -0.5])}
UNCOND = {"y": jnp.zeros((2,))}


NOISE = jnp.asarray(np.random.default_rng(8).standard_normal(SMALL_SHAPE), jnp.float32)


class SamplerJitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_sampler_same_with_and_without_jit(self):
    fn = self.variant(lambda noise, w: d.sample(
        model_fn=_cond_model, shape=SMALL_SHAPE, key=jax.random.key(0), num_steps=6,
        schedule=SCHEDULE, cond=COND, uncond=UNCOND, guidance_weight=w, clip="dynamic",
        dynamic_percentile=0.9, init_noise=noise))
    got = np.asarray(fn(NOISE, 1.5))
    assert np.all(np.abs(got) <= 1.0 + 1e-6)
    # The reference: the same steps written out with the public step functions, eagerly.
    z = NOISE
    for j in range(6):
      lt = jnp.full((2,), SCHEDULE((6 - j) / 6))
      ls = jnp.full((2,), SCHEDULE((5 - j) / 6))
      x, eps = d.predict_x_and_eps(model_fn=_cond_model, z=z, logsnr=lt, prediction="v",
                                   cond=COND, uncond=UNCOND, guidance_weight=1.5,
                                   clip="dynamic", dynamic_percentile=0.9)
      z = x if j == 5 else d.ddim_step(z_t=z, x_pred=x, eps_pred=eps, logsnr_t=lt, logsnr_s=ls)
    np.testing.assert_allclose(got, np.asarray(z), rtol=1e-5, atol=1e-5)


def test_sample_equals_a_hand_rolled_loop_with_oscillating_guidance():
  num_steps, w, low = 5, 4.0, 0.5
  key = jax.random.key(9)
  kwargs = dict(model_fn=_cond_model, shape=SMALL_SHAPE, num_steps=num_steps,
                schedule=SCHEDULE, sampler="ddim", eta=0.0, prediction="v", cond=COND,
                uncond=UNCOND, guidance_weight=w, guidance_low=low,
                guidance_schedule="oscillating", clip="dynamic", dynamic_percentile=0.9)
  got, traj = jax.jit(lambda k: d.sample(key=k, return_trajectory=True, **kwargs))(key)
  z = traj[0]
  for j in range(num_steps):  # weights w, low, w, low, w
    t, s = (num_steps - j) / num_steps, (num_steps - j - 1) / num_steps
    lt, ls = jnp.full((2,), SCHEDULE(t)), jnp.full((2,), SCHEDULE(s))
    x, eps = d.predict_x_and_eps(model_fn=_cond_model, z=z, logsnr=lt, prediction="v",
                                 cond=COND, uncond=UNCOND, guidance_weight=[w, low][j % 2],
                                 clip="dynamic", dynamic_percentile=0.9)
    z = x if j == num_steps - 1 else d.ddim_step(z_t=z, x_pred=x, eps_pred=eps, logsnr_t=lt,
                                                  logsnr_s=ls)
    np.testing.assert_allclose(np.asarray(traj[j + 1]), np.asarray(z), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(z), rtol=1e-4, atol=1e-5)
  # A constant weight gives a different result: the oscillation is really applied.
  const = jax.jit(lambda k: d.sample(key=k, **dict(kwargs, guidance_schedule="constant")))(key)
  assert np.abs(np.asarray(const) - np.asarray(got)).max() > 1e-3


def test_jit_with_static_argnames_and_keys():
  sample_jit = jax.jit(d.sample, static_argnames=d.SAMPLE_STATIC_ARGNAMES)
  kwargs = dict(model_fn=_cond_model, shape=SMALL_SHAPE, num_steps=4, schedule=SCHEDULE,
                cond=COND)
  a = sample_jit(key=jax.random.key(0), init_noise=NOISE, **kwargs)
  b = sample_jit(key=jax.random.key(1), init_noise=NOISE, **kwargs)
  # DDIM eta = 0 from the same initial noise is deterministic whatever the key.
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Without init_noise the key draws z_1: other keys, other samples; the same key, the same.
  c = sample_jit(key=jax.random.key(1), **kwargs)
  e = sample_jit(key=jax.random.key(2), **kwargs)
  assert np.abs(np.asarray(c) - np.asarray(e)).max() > 1e-2
  np.testing.assert_array_equal(np.asarray(c), np.asarray(sample_jit(key=jax.random.key(1),
                                                                     **kwargs)))


def test_sampler_errors_are_clear():
  base = dict(model_fn=_cond_model, shape=SMALL_SHAPE, key=jax.random.key(0), schedule=SCHEDULE,
              cond=COND)
  with pytest.raises(ValueError, match="sampler"):
    d.sample(num_steps=2, sampler="dpm_solver", **base)
  with pytest.raises(ValueError, match="num_steps"):
    d.sample(num_steps=0, **base)
  with pytest.raises(ValueError, match="eta"):
    d.sample(num_steps=2, eta=1.5, **base)
  with pytest.raises(ValueError, match="init_noise"):
    d.sample(num_steps=2, init_noise=jnp.zeros((1, 2)), **base)
  with pytest.raises(ValueError, match="unconditional"):
    d.sample(num_steps=2, guidance_weight=2.0, **base)
  with pytest.raises(ValueError, match="unconditional"):
    d.sample(num_steps=2, guidance_weight=2.0, guidance_schedule="oscillating", **base)
  with pytest.raises(ValueError, match="ddpm_variance"):
    d.sample(num_steps=2, sampler="ddpm", ddpm_variance="learned", **base)
