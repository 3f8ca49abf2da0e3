"""Tests of rectified flow in the diffusion math: the 'flow' parameterization, the
'rectified_flow' schedule and its time shift, logit-normal training times, the flow-matching
loss, and the Euler / Heun samplers of the rectified-flow ODE.

The sampler tests integrate the exact velocity field of a 1-D Gaussian mixture, so any deviation
of the sample statistics from the mixture's comes from the sampler alone.
"""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from vdm_jax import config_utils
from vdm_jax import diffusion as d
from vdm_jax import sharding as sharding_lib
from vdm_jax.diffusion import distillation
from vdm_jax.sample import sampler as stage_sampling
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import objective

import mixture_testlib as mix

RF = d.LogSNRSchedule("rectified_flow", -20.0, 20.0)
COSINE = d.LogSNRSchedule("cosine", -20.0, 20.0)


def _alpha_sigma64(logsnr):
  """float64 (alpha, sigma) by their definition alpha^2 = sigmoid(logsnr)."""
  l = np.asarray(logsnr, np.float64)
  return np.sqrt(1 / (1 + np.exp(-l))), np.sqrt(1 / (1 + np.exp(l)))


# --- the flow parameterization ------------------------------------------------------------------

LOGSNRS = np.array([-20.0, -7.3, -1.2, 0.0, 0.4, 3.1, 9.6, 20.0], np.float32)
SHAPE = (len(LOGSNRS), 2, 3)


def _triple(seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(-1.0, 1.0, SHAPE), dtype)
  eps = jnp.asarray(rng.standard_normal(SHAPE), dtype)
  logsnr = jnp.asarray(rng.uniform(-12.0, 12.0, SHAPE[0]), dtype)
  return x, eps, logsnr


class FlowConversionsTest(chex.TestCase):

  def test_flow_is_the_rectified_flow_velocity_of_the_rescaled_z(self):
    x, eps, logsnr = _triple(0)
    z = d.q_sample(x=x, eps=eps, logsnr=logsnr)
    alpha, sigma = _alpha_sigma64(logsnr[:, None, None])
    t = sigma / (alpha + sigma)
    x64, eps64 = np.asarray(x, np.float64), np.asarray(eps, np.float64)
    # z_rf = z / (alpha + sigma) = (1 - t) x + t eps, and t = sigmoid(-logsnr / 2).
    np.testing.assert_allclose(np.asarray(z) / (alpha + sigma), (1 - t) * x64 + t * eps64,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.flow_t_from_logsnr(logsnr))[:, None, None], t,
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d.flow_scale(logsnr))[:, None, None], alpha + sigma,
                               rtol=1e-6)
    u = d.from_x_and_eps(prediction="flow", x=x, eps=eps, logsnr=logsnr)
    np.testing.assert_array_equal(np.asarray(u), np.asarray(eps - x))
    got_x, got_eps = d.to_x_and_eps(prediction="flow", model_output=u, z=z, logsnr=logsnr)
    np.testing.assert_allclose(np.asarray(got_x), x64, atol=2e-6)
    np.testing.assert_allclose(np.asarray(got_eps), eps64, atol=2e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_every_conversion_recovers_the_true_velocity(self):
    def conversions(x, eps, logsnr):
      z = d.q_sample(x=x, eps=eps, logsnr=logsnr)
      v = d.predict_v_from_x_and_eps(x=x, eps=eps, logsnr=logsnr)
      u = eps - x
      kw = dict(z=z, logsnr=logsnr)
      return {"flow_from_x": (d.predict_flow_from_x(x=x, **kw), u),
              "flow_from_eps": (d.predict_flow_from_eps(eps=eps, **kw), u),
              "flow_from_v": (d.predict_flow_from_v(v=v, **kw), u),
              "v_from_flow": (d.predict_v_from_flow(u=u, **kw), v),
              "x_from_flow": (d.predict_x_from_flow(u=u, **kw), x),
              "eps_from_flow": (d.predict_eps_from_flow(u=u, **kw), eps)}
    x, eps, logsnr = _triple(1)
    amp = np.exp(0.5 * np.abs(np.asarray(logsnr)))[:, None, None]
    for name, (value, want) in self.variant(conversions)(x, eps, logsnr).items():
      err = np.abs(np.asarray(value) - np.asarray(want))
      # u from x alone (high logsnr) and from eps alone (low logsnr) divide by sigma or alpha.
      tol = 2e-6 * amp if name in ("flow_from_x", "flow_from_eps") else 2e-6
      assert np.all(err <= 1e-6 + tol), (name, float(err.max()))

  def test_round_trips_through_flow_are_exact_in_float64(self):
    with jax.enable_x64(True):
      rng = np.random.default_rng(2)
      z, a = (jnp.asarray(rng.standard_normal(SHAPE)) for _ in range(2))
      logsnr = jnp.asarray(rng.uniform(-15.0, 15.0, SHAPE[0]))
      kw = dict(z=z, logsnr=logsnr)
      trips = {
          "flow->v->flow": d.predict_flow_from_v(v=d.predict_v_from_flow(u=a, **kw), **kw),
          "v->flow->v": d.predict_v_from_flow(u=d.predict_flow_from_v(v=a, **kw), **kw),
          "flow->x->flow": d.predict_flow_from_x(x=d.predict_x_from_flow(u=a, **kw), **kw),
          "x->flow->x": d.predict_x_from_flow(u=d.predict_flow_from_x(x=a, **kw), **kw),
          "flow->eps->flow": d.predict_flow_from_eps(eps=d.predict_eps_from_flow(u=a, **kw),
                                                     **kw),
          "eps->flow->eps": d.predict_eps_from_flow(u=d.predict_flow_from_eps(eps=a, **kw),
                                                    **kw),
      }
      for pred in ("flow", "v", "eps", "x"):
        x, eps = d.to_x_and_eps(prediction=pred, model_output=a, **kw)
        u = d.from_x_and_eps(prediction="flow", x=x, eps=eps, logsnr=logsnr)
        xu, epsu = d.to_x_and_eps(prediction="flow", model_output=u, **kw)
        trips[f"{pred}->flow->{pred}"] = d.from_x_and_eps(prediction=pred, x=xu, eps=epsu,
                                                         logsnr=logsnr)
      for name, value in trips.items():
        chex.assert_trees_all_close(value, a, atol=1e-8, custom_message=name)

  def test_flow_round_trips_are_well_conditioned_in_float32(self):
    rng = np.random.default_rng(3)
    z, u = (jnp.asarray(rng.standard_normal(SHAPE), jnp.float32) for _ in range(2))
    logsnr = jnp.asarray(LOGSNRS)
    x, eps = d.to_x_and_eps(prediction="flow", model_output=u, z=z, logsnr=logsnr)
    back = d.from_x_and_eps(prediction="flow", x=x, eps=eps, logsnr=logsnr)
    # alpha + sigma lies in [1, sqrt 2]: no amplification even at logsnr +-20.
    np.testing.assert_allclose(np.asarray(back), np.asarray(u), atol=2e-6)
    v = d.predict_v_from_flow(u=u, z=z, logsnr=logsnr)
    np.testing.assert_allclose(np.asarray(d.predict_flow_from_v(v=v, z=z, logsnr=logsnr)),
                               np.asarray(u), atol=2e-6)

  def test_errors(self):
    x, eps, logsnr = _triple(4)
    with pytest.raises(ValueError, match="same shape"):
      d.predict_x_from_flow(z=x, u=eps[:, :1], logsnr=logsnr)
    with pytest.raises(ValueError, match="same shape"):
      d.predict_flow_from_x_and_eps(x=x, eps=eps[:1])
    with pytest.raises(ValueError, match=r"shape \[B\]"):
      d.predict_eps_from_flow(z=x, u=eps, logsnr=logsnr[:2])
    with pytest.raises(ValueError, match="not one of"):
      d.to_x_and_eps(prediction="velocity", model_output=x, z=x, logsnr=logsnr)


# --- the rectified-flow schedule ----------------------------------------------------------------

T = np.linspace(0.0, 1.0, 2001, dtype=np.float32)


def test_rectified_flow_schedule_is_two_log_odds_clipped():
  t = T.astype(np.float64)
  with np.errstate(divide="ignore"):
    ref = np.clip(2 * np.log((1 - t) / t), -20.0, 20.0)
  np.testing.assert_allclose(np.asarray(RF(T)), ref, rtol=1e-5, atol=1e-5)
  assert float(RF(0.5)) == 0.0
  assert float(RF(0.0)) == 20.0 and float(RF(1.0)) == -20.0   # the clip ends, no inf or nan
  interior = np.asarray(RF(T[1:-1]))
  assert np.all(np.diff(interior) < 0)
  narrow = d.LogSNRSchedule("rectified_flow", -5.0, 7.0)
  np.testing.assert_allclose(np.asarray(narrow(T)), np.clip(ref, -5.0, 7.0), rtol=1e-5,
                             atol=1e-5)


def test_rectified_flow_inverse_inverts():
  assert float(RF.inverse(0.0)) == 0.5
  interior = T[1:-1]
  np.testing.assert_allclose(np.asarray(RF.inverse(RF(interior))), interior, atol=1e-6)
  logsnr = np.linspace(-20.0, 20.0, 401).astype(np.float32)
  # Near t = 1, |dlogsnr/dt| = 2 / (t (1 - t)) ~ 4e4 at logsnr -20, so the float32 spacing of t
  # there (6e-8) alone moves logsnr by ~2.5e-3.
  np.testing.assert_allclose(np.asarray(RF(RF.inverse(logsnr))), logsnr, atol=5e-3)
  np.testing.assert_allclose(np.asarray(RF.inverse(logsnr)),
                             1 / (1 + np.exp(logsnr.astype(np.float64) / 2)), rtol=1e-5)
  # Its t is the rectified-flow time sigma / (alpha + sigma) of the logsnr it gives.
  alpha, sigma = _alpha_sigma64(np.asarray(RF(interior)))
  np.testing.assert_allclose(sigma / (alpha + sigma), interior, atol=1e-6)


@pytest.mark.parametrize("s", [0.5, 3.0])
def test_sd3_time_shift_is_a_logsnr_shift(s):
  shifted = d.LogSNRSchedule("rectified_flow", -20.0, 20.0, d.time_shift(s))
  assert shifted.shift == pytest.approx(-2 * math.log(s))
  t = T[1:-1].astype(np.float64)
  t_sd3 = s * t / (1 + (s - 1) * t)
  interior = (np.abs(np.asarray(RF(T[1:-1]))) < 19.0)   # away from the clipped ends
  np.testing.assert_allclose(np.asarray(shifted(T[1:-1]))[interior],
                             (2 * np.log((1 - t_sd3) / t_sd3))[interior], atol=1e-4)
  np.testing.assert_allclose(np.asarray(shifted.inverse(shifted(T[1:-1])))[interior],
                             T[1:-1][interior], atol=2e-6)
  with pytest.raises(ValueError, match="positive"):
    d.time_shift(0.0)


def test_shifted_rectified_flow_from_config_uses_the_resolution_shift():
  cfg = ml_collections.ConfigDict(dict(schedule="shifted_rectified_flow", logsnr_min=-20.0,
                                       logsnr_max=20.0, schedule_base_resolution=64))
  s = d.schedule_from_config(cfg, resolution=256)
  assert s == d.LogSNRSchedule("rectified_flow", -20.0, 20.0, d.time_shift(256 / 64))
  assert s.shift == pytest.approx(d.resolution_shift(256, 64))
  assert d.schedule_from_config(dict(cfg, schedule="rectified_flow")) == RF
  with pytest.raises(ValueError, match="resolution"):
    d.schedule_from_config(cfg)


# --- logit-normal training times ----------------------------------------------------------------

N_T = 200_000


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.7, 0.5), (-1.5, 2.0)])
def test_logit_normal_times_have_the_right_distribution(mean, std):
  t = np.asarray(d.sample_t(jax.random.key(0), N_T, t_sampling="logit_normal",
                            logit_normal_mean=mean, logit_normal_std=std), np.float64)
  assert t.shape == (N_T,)
  assert np.all((t >= 0.0) & (t <= 1.0))
  t = np.clip(t, 1e-12, 1 - 1e-12)
  logit = np.log(t) - np.log1p(-t)
  # 5 standard errors: the mean's is std / sqrt(n), the sample std's about std / sqrt(2 n).
  assert abs(logit.mean() - mean) < 5 * std / math.sqrt(N_T)
  assert abs(logit.std() - std) < 5 * std / math.sqrt(2 * N_T)
  # And the shape: the normal CDF at mean + q std, within 5 binomial standard errors.
  for q, cdf in ((-1.5, 0.0668072), (-0.5, 0.3085375), (0.0, 0.5), (1.0, 0.8413447)):
    frac = np.mean(logit < mean + q * std)
    assert abs(frac - cdf) < 5 * math.sqrt(cdf * (1 - cdf) / N_T), (q, frac, cdf)


def test_uniform_times_are_unchanged_and_logit_normal_is_not_uniform():
  key = jax.random.key(3)
  # The default draws exactly what it always drew.
  np.testing.assert_array_equal(np.asarray(d.sample_t(key, 1000)),
                                np.asarray(jax.random.uniform(key, (1000,), jnp.float32)))
  np.testing.assert_array_equal(np.asarray(d.sample_t(key, 1000, t_sampling="uniform")),
                                np.asarray(d.sample_t(key, 1000)))
  t = np.asarray(d.sample_t(key, 20_000, t_sampling="logit_normal"))
  assert np.mean((t < 0.1) | (t > 0.9)) < 0.05   # uniform: 0.2; logit-normal(0, 1): 0.028
  with pytest.raises(ValueError, match="t_sampling='beta' is not one of"):
    d.sample_t(key, 4, t_sampling="beta")
  with pytest.raises(ValueError, match="num_train_timesteps=0"):
    d.sample_t(key, 4, t_sampling="logit_normal", num_discrete_steps=10)
  with pytest.raises(ValueError, match="logit_normal_std=0.0"):
    d.sample_t(key, 4, t_sampling="logit_normal", logit_normal_std=0.0)


# --- the flow-matching loss ---------------------------------------------------------------------

LOSS_SHAPE = (32, 2, 3, 3, 1)


def _loss_data(seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(-1.0, 1.0, LOSS_SHAPE), jnp.float32)
  eps = jnp.asarray(rng.standard_normal(LOSS_SHAPE), jnp.float32)
  return x, eps


def _some_model(z, logsnr, cond):
  del cond
  return 0.6 * z - 0.3 * jnp.tanh(0.2 * logsnr)[:, None, None, None, None]


@pytest.mark.parametrize("weighting", ["auto", "flow", "constant"])
@pytest.mark.parametrize("schedule", [RF, COSINE], ids=["rectified_flow", "cosine"])
def test_flow_loss_is_the_plain_mse_on_the_velocity(weighting, schedule):
  x, eps = _loss_data(0)
  seen = []

  def model_fn(z, logsnr, cond):
    seen.append((z, logsnr))
    return _some_model(z, logsnr, cond)

  loss, aux = d.diffusion_loss(
      model_fn=model_fn, x=x, key=jax.random.key(1), schedule=schedule, prediction="flow",
      weighting=weighting, noise_fn=lambda key, shape, dtype: eps)
  z, logsnr = seen[-1]
  np.testing.assert_allclose(np.asarray(logsnr), np.asarray(schedule(aux["t"])), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(z), np.asarray(d.q_sample(x=x, eps=eps, logsnr=logsnr)),
                             rtol=1e-6, atol=1e-6)
  u_pred = np.asarray(_some_model(z, logsnr, None), np.float64)
  u = np.asarray(eps, np.float64) - np.asarray(x, np.float64)
  per_example = np.mean(np.square(u_pred - u).reshape(LOSS_SHAPE[0], -1), axis=1)
  np.testing.assert_allclose(np.asarray(aux["loss_per_example"]), per_example, rtol=1e-5)
  np.testing.assert_allclose(float(loss), np.mean(np.square(u_pred - u)), rtol=1e-5)
  # x_mse is the same error seen in x: x_hat - x = -t (u_hat - u).
  t_rf = np.asarray(d.flow_t_from_logsnr(logsnr), np.float64)
  np.testing.assert_allclose(np.asarray(aux["x_mse"]), per_example * t_rf**2, rtol=1e-4)


def test_default_weighting_is_flow_matching_for_flow_and_v_mse_otherwise():
  x, eps = _loss_data(2)
  kw = dict(model_fn=_some_model, x=x, key=jax.random.key(4), schedule=RF,
            noise_fn=lambda key, shape, dtype: eps)
  flow_default, _ = d.diffusion_loss(prediction="flow", **kw)
  flow_explicit, _ = d.diffusion_loss(prediction="flow", weighting="flow", **kw)
  assert float(flow_default) == float(flow_explicit)
  flow_as_v, _ = d.diffusion_loss(prediction="flow", weighting="v_mse", **kw)
  assert abs(float(flow_as_v) - float(flow_default)) > 1e-3 * float(flow_default)
  for prediction in ("v", "eps", "x"):
    default, _ = d.diffusion_loss(prediction=prediction, **kw)
    v_mse, _ = d.diffusion_loss(prediction=prediction, weighting="v_mse", **kw)
    assert float(default) == float(v_mse), prediction
  assert d.resolve_weighting("auto", "flow") == "flow"
  assert d.resolve_weighting("auto", "v") == "v_mse"
  assert d.resolve_weighting("constant", "flow") == "flow"


def test_loss_draws_logit_normal_times_when_asked():
  x, _ = _loss_data(5)
  x = jnp.concatenate([x] * 64)   # 2048 examples
  _, aux = d.diffusion_loss(model_fn=_some_model, x=x, key=jax.random.key(6), schedule=RF,
                            prediction="flow", t_sampling="logit_normal",
                            logit_normal_mean=1.0, logit_normal_std=0.5)
  t = np.asarray(aux["t"], np.float64)
  logit = np.log(t) - np.log1p(-t)
  assert abs(logit.mean() - 1.0) < 5 * 0.5 / math.sqrt(len(t))
  assert abs(logit.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * len(t))
  # On the rectified-flow schedule logsnr = -2 logit(t): the SD3 density in logsnr.
  np.testing.assert_allclose(np.asarray(aux["logsnr"]), -2 * logit, rtol=1e-4, atol=1e-4)


# --- Euler and Heun -----------------------------------------------------------------------------

def mixture_velocity(z, logsnr, cond=None):
  """The exact rectified-flow velocity E[eps - x | z] of x ~ sum_k w_k N(mu_k, s_k^2); z: [B, 1]
  (the VP z, as every model here takes it), logsnr: [B]. A 'flow' model.

  In flow coordinates z_rf = z / (alpha + sigma) = (1 - t) x + t eps, t = sigma / (alpha + sigma).
  Under component k, z_rf ~ N((1 - t) mu_k, v_k) with v_k = (1 - t)^2 s_k^2 + t^2, so the
  responsibilities are gamma_k = w_k N(z_rf; (1 - t) mu_k, v_k) / sum_j (...), and Gaussian
  conditioning gives E[x | z_rf, k] = mu_k + (1 - t) s_k^2 / v_k (z_rf - (1 - t) mu_k).
  With x_hat = sum_k gamma_k E[x | z_rf, k] and eps = (z_rf - (1 - t) x) / t,
  u = E[eps | z] - x_hat = (z_rf - (1 - t) x_hat) / t - x_hat = (z_rf - x_hat) / t.
  """
  del cond
  l = logsnr[:, None]
  alpha, sigma = jnp.sqrt(jax.nn.sigmoid(l)), jnp.sqrt(jax.nn.sigmoid(-l))
  z_rf, t = z / (alpha + sigma), sigma / (alpha + sigma)
  var = (1 - t)**2 * mix.MIX_SD**2 + t**2                                     # [B, K]
  log_p = np.log(mix.MIX_W) - 0.5 * jnp.log(var) - 0.5 * (z_rf - (1 - t) * mix.MIX_MU)**2 / var
  gamma = jax.nn.softmax(log_p, axis=-1)
  mean_k = mix.MIX_MU + (1 - t) * mix.MIX_SD**2 / var * (z_rf - (1 - t) * mix.MIX_MU)
  x_hat = jnp.sum(gamma * mean_k, axis=-1, keepdims=True)
  return (z_rf - x_hat) / t


def mixture_denoiser(z, logsnr, cond=None):
  """The same field as an x-prediction model: x_hat = z_rf - t u."""
  u = mixture_velocity(z, logsnr, cond)
  alpha, sigma = d.alpha_sigma(logsnr[:, None])
  return (z - sigma * u) / (alpha + sigma)




def statistics_error(x):
  """The largest deviation of the sample's weights, means and stds from the mixture's."""
  w, m, s = mix.mixture_statistics(x)
  return max(np.abs(w - mix.MIX_W).max(), np.abs(m - mix.MIX_MU).max(), np.abs(s - mix.MIX_SD).max())


NUM_MIX = 8192
MIX_NOISE = np.random.default_rng(0).standard_normal((NUM_MIX, 1)).astype(np.float32)
_cache = {}


def mix_sample(sampler, num_steps, prediction="flow", schedule=RF):
  """Samples of the mixture from MIX_NOISE (deterministic; memoized across tests)."""
  key = (sampler, num_steps, prediction, schedule)
  if key not in _cache:
    model = mixture_velocity if prediction == "flow" else mixture_denoiser
    _cache[key] = np.asarray(jax.jit(lambda noise: d.sample(
        model_fn=model, shape=(NUM_MIX, 1), key=jax.random.key(0), num_steps=num_steps,
        schedule=schedule, sampler=sampler, prediction=prediction, init_noise=noise))(
            MIX_NOISE))
  return _cache[key]


@pytest.mark.parametrize("sampler,num_steps", [("euler", 256), ("heun", 32)])
def test_flow_samplers_reproduce_a_gaussian_mixture(sampler, num_steps):
  # Tolerances as in test_diffusion_samplers.py: 4 standard errors at 8192 samples (weights
  # 0.005, means 0.002/0.003, stds 0.0014/0.002) plus the discretization bias, which for Euler
  # at 256 steps and Heun at 32 is below 0.005 (measured against 1024 Heun steps).
  x = mix_sample(sampler, num_steps)
  assert np.all(np.isfinite(x))
  weights, means, stds = mix.mixture_statistics(x)
  np.testing.assert_allclose(weights, mix.MIX_W, atol=0.025)
  np.testing.assert_allclose(means, mix.MIX_MU, atol=0.015)
  np.testing.assert_allclose(stds, mix.MIX_SD, atol=0.015)


def test_heun_needs_clearly_fewer_steps_than_euler():
  # The same initial noise for every run, so the sample statistics differ by the integration
  # error alone; a reference flow map (1024 Heun steps) measures each run's error per sample.
  ref = mix_sample("heun", 1024)
  # Euler converges to the same map (its first-order error at 1024 steps: ~1e-3 on average;
  # larger on the few samples near the boundary between the components, where the map is steep).
  assert np.mean(np.abs(mix_sample("euler", 1024) - ref)) < 2e-3
  path = {(s, n): np.mean(np.abs(mix_sample(s, n) - ref))
          for s in ("euler", "heun") for n in (8, 16, 32, 64)}
  stats = {(s, n): statistics_error(mix_sample(s, n))
           for s in ("euler", "heun") for n in (8, 16, 32)}
  for n in (8, 16, 32, 64):
    assert path["heun", n] < 0.7 * path["euler", n], (n, path)
  for n in (8, 16, 32):
    assert stats["heun", n] < stats["euler", n], (n, stats)
  # Orders: halving the step divides Euler's error by ~2 (first order), Heun's by ~4.
  for n in (16, 32):
    assert 1.6 < path["euler", n] / path["euler", 2 * n] < 2.5, path
    assert path["heun", n] / path["heun", 2 * n] > 3.3, path
  # At about the same number of model evaluations (Heun: 2N - 1) Heun is still more accurate.
  for n in (16, 32):
    assert path["heun", n] < 0.8 * path["euler", 2 * n], path


@pytest.mark.parametrize("num_steps", [1, 7])
@pytest.mark.parametrize("schedule", [RF, COSINE], ids=["rectified_flow", "cosine"])
def test_euler_is_ddim_on_the_same_grid(num_steps, schedule):
  # dz_rf = (t_s - t_t)(eps - x) from z_rf = (1 - t) x + t eps lands on (1 - s) x + s eps: the
  # deterministic DDIM step alpha_s x + sigma_s eps, rescaled. Whatever the schedule or model.
  kw = dict(model_fn=mixture_velocity, shape=(256, 1), key=jax.random.key(0),
            num_steps=num_steps, schedule=schedule, prediction="flow",
            init_noise=MIX_NOISE[:256], return_trajectory=True)
  x_euler, traj_euler = d.sample(sampler="euler", **kw)
  x_ddim, traj_ddim = d.sample(sampler="ddim", **kw)
  np.testing.assert_allclose(np.asarray(traj_euler), np.asarray(traj_ddim), atol=2e-5)
  np.testing.assert_allclose(np.asarray(x_euler), np.asarray(x_ddim), atol=2e-5)
  # ... and Heun is not (its correction changes every step but the last).
  if num_steps > 1:
    x_heun = d.sample(sampler="heun", **dict(kw, return_trajectory=False))
    assert np.abs(np.asarray(x_heun) - np.asarray(x_ddim)).max() > 1e-2


def test_euler_step_is_the_flow_ode_step():
  rng = np.random.default_rng(7)
  z, u = (jnp.asarray(rng.standard_normal((4, 3)), jnp.float32) for _ in range(2))
  lt, ls = jnp.array([-20.0, -2.0, 1.0, 5.0]), jnp.array([-15.0, 0.5, 1.5, 20.0])
  at, st = _alpha_sigma64(np.asarray(lt)[:, None])
  a_s, s_s = _alpha_sigma64(np.asarray(ls)[:, None])
  z_rf = np.asarray(z, np.float64) / (at + st)
  want = (a_s + s_s) * (z_rf + (s_s / (a_s + s_s) - st / (at + st)) * np.asarray(u, np.float64))
  got = d.euler_step(z_t=z, velocity=u, logsnr_t=lt, logsnr_s=ls)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="same shape"):
    d.euler_step(z_t=z, velocity=u[:, :1], logsnr_t=lt, logsnr_s=ls)


def _data_oracle(data, prediction):
  """A model that knows the data point: its velocity eps* - x is constant along the ray."""
  def model_fn(z, logsnr, cond):
    del cond
    eps = d.predict_eps_from_x(z=z, x=data, logsnr=logsnr)
    return d.from_x_and_eps(prediction=prediction, x=data, eps=eps, logsnr=logsnr)
  return model_fn


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("prediction", ["flow", "v", "eps", "x"])
def test_flow_samplers_work_with_every_prediction(sampler, prediction):
  shape = (3, 2, 3, 3, 1)
  rng = np.random.default_rng(8)
  data = jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  x, traj = d.sample(model_fn=_data_oracle(data, prediction), shape=shape,
                     key=jax.random.key(2), num_steps=5, schedule=RF, sampler=sampler,
                     prediction=prediction, init_noise=noise, return_trajectory=True)
  atol = 5e-3 if prediction == "eps" else 1e-4   # eps -> x at logsnr -20 amplifies by e^10
  np.testing.assert_allclose(np.asarray(x), np.asarray(data), atol=atol)
  # The straight path: every z_t lies on z_rf = (1 - t) x + t eps*, eps* implied by z_1.
  eps_star = d.predict_eps_from_x(z=traj[0], x=data, logsnr=RF(1.0))
  for i, t in enumerate(d.time_grid(5)[::-1][1:-1], start=1):
    want = d.q_sample(x=data, eps=eps_star, logsnr=jnp.full((3,), RF(t)))
    np.testing.assert_allclose(np.asarray(traj[i]), np.asarray(want), atol=atol)
  # On the mixture, an x-model and the same field as a flow model sample alike.
  if prediction == "x":
    np.testing.assert_allclose(mix_sample(sampler, 16, "x"), mix_sample(sampler, 16), atol=1e-4)


def _cond_eps_model(z, logsnr, cond):
  """An eps-model with a conditional shift, big enough that dynamic thresholding acts."""
  return 0.4 * z + 1.5 * cond["y"][:, None, None, None, None] * jnp.tanh(logsnr - 1.0)[
      :, None, None, None, None]


def _as_flow(model_fn):
  def flow_fn(z, logsnr, cond):
    return d.predict_flow_from_eps(z=z, eps=model_fn(z, logsnr, cond), logsnr=logsnr)
  return flow_fn


COND = {"y": jnp.array([1.0, -0.5])}
UNCOND = {"y": jnp.zeros((2,))}
SMALL = (2, 2, 4, 4, 1)
SMALL_NOISE = jnp.asarray(np.random.default_rng(9).standard_normal(SMALL), jnp.float32)


def test_heun_with_guidance_equals_a_hand_rolled_loop():
  num_steps, w, low = 5, 3.0, 0.5
  kw = dict(cond=COND, uncond=UNCOND, clip="dynamic", dynamic_percentile=0.9)
  got = jax.jit(lambda noise: d.sample(
      model_fn=_cond_eps_model, shape=SMALL, key=jax.random.key(0), num_steps=num_steps,
      schedule=RF, sampler="heun", prediction="eps", guidance_weight=w,
      guidance_schedule="oscillating", guidance_low=low, init_noise=noise, **kw))(SMALL_NOISE)
  # The reference: Heun written out in float64 flow coordinates around the public guided,
  # thresholded prediction; the weight of step j (w, low, w, ...) at both of its evaluations.
  def velocity(z, t, weight):
    logsnr = jnp.full((2,), RF(t))
    x, eps = d.predict_x_and_eps(model_fn=_cond_eps_model, z=jnp.asarray(z, jnp.float32),
                                 logsnr=logsnr, prediction="eps", guidance_weight=weight, **kw)
    return np.asarray(eps, np.float64) - np.asarray(x, np.float64), np.asarray(x, np.float64)

  def scale_and_time(t):
    alpha, sigma = _alpha_sigma64(float(RF(t)))
    return alpha + sigma, sigma / (alpha + sigma)

  z = np.asarray(SMALL_NOISE, np.float64)
  for j in range(num_steps):
    t, s = (num_steps - j) / num_steps, (num_steps - j - 1) / num_steps
    weight = [w, low][j % 2]
    (c_t, tau_t), (c_s, tau_s) = scale_and_time(t), scale_and_time(s)
    u_t, x_t = velocity(z, t, weight)
    if j == num_steps - 1:
      z = x_t
      break
    z_euler = c_s * (z / c_t + (tau_s - tau_t) * u_t)
    u_s, _ = velocity(z_euler, s, weight)
    z = c_s * (z / c_t + (tau_s - tau_t) * 0.5 * (u_t + u_s))
  np.testing.assert_allclose(np.asarray(got), z, rtol=1e-4, atol=1e-4)
  assert np.all(np.abs(np.asarray(got)) <= 1.0 + 1e-6)   # the last x is thresholded


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_guidance_of_a_flow_model_is_guidance_of_its_eps_model(sampler):
  # Guidance combines raw outputs; u is affine in eps at fixed z with coefficients summing to 1,
  # so guiding the flow form of a model equals guiding the model itself.
  kw = dict(shape=SMALL, key=jax.random.key(0), num_steps=6, schedule=RF, sampler=sampler,
            cond=COND, uncond=UNCOND, guidance_weight=2.5, init_noise=SMALL_NOISE)
  as_eps = d.sample(model_fn=_cond_eps_model, prediction="eps", **kw)
  as_flow = d.sample(model_fn=_as_flow(_cond_eps_model), prediction="flow", **kw)
  np.testing.assert_allclose(np.asarray(as_flow), np.asarray(as_eps), rtol=1e-4, atol=1e-4)
  unguided = d.sample(model_fn=_cond_eps_model, prediction="eps", **dict(
      kw, guidance_weight=0.0))
  assert np.abs(np.asarray(unguided) - np.asarray(as_eps)).max() > 1e-2


@pytest.mark.parametrize("sampler,evaluations", [("euler", 6), ("heun", 11), ("ddim", 6)])
def test_heun_evaluates_the_model_twice_per_step_but_not_at_t0(sampler, evaluations):
  calls = []

  def model_fn(z, logsnr, cond):
    jax.debug.callback(lambda l: calls.append(float(l[0])), logsnr)
    return _cond_eps_model(z, logsnr, cond)

  jax.block_until_ready(jax.jit(lambda noise: d.sample(
      model_fn=model_fn, shape=SMALL, key=jax.random.key(0), num_steps=6, schedule=RF,
      sampler=sampler, prediction="eps", cond=COND, init_noise=noise))(SMALL_NOISE))
  jax.effects_barrier()
  assert len(calls) == evaluations   # Heun: 2N - 1 (the last step, to t = 0, is Euler's)
  assert max(calls) < float(RF(1.0 / 6.0)) + 1e-3   # never at t = 0 (logsnr_max)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_flow_samplers_are_deterministic_and_ignore_eta(sampler):
  base = dict(model_fn=_cond_eps_model, shape=SMALL, schedule=RF, cond=COND, num_steps=3,
              sampler=sampler, init_noise=SMALL_NOISE)
  jitted = jax.jit(d.sample, static_argnames=d.SAMPLE_STATIC_ARGNAMES)
  a = jitted(key=jax.random.key(0), **base)
  b = jitted(key=jax.random.key(1), eta=1.0, **base)   # eta is DDIM's; ddpm ignores it too
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="sampler='rk4' is not one of"):
    d.sample(key=jax.random.key(0), **dict(base, sampler="rk4"))


# --- configs and the training objective ---------------------------------------------------------

def _flow_config(**diffusion):
  c = tiny.get_config()
  c.diffusion.update(dict(dict(prediction="flow", schedule="rectified_flow"), **diffusion))
  c.sample.sampler = "heun"
  return c


def test_flow_configs_validate_and_old_configs_keep_their_meaning():
  config_utils.validate_config(_flow_config(t_sampling="logit_normal", loss_weighting="flow"))
  config_utils.validate_config(_flow_config(schedule="shifted_rectified_flow"))
  c = tiny.get_config()
  assert c.diffusion.t_sampling == "uniform" and c.diffusion.loss_weighting == "auto"
  assert d.t_sampling_from_config(c.diffusion) == {
      "t_sampling": "uniform", "logit_normal_mean": 0.0, "logit_normal_std": 1.0}
  for key in ("t_sampling", "logit_normal_mean", "logit_normal_std"):
    del c.diffusion[key]   # a config written before these keys
  config_utils.validate_config(c)
  assert d.t_sampling_from_config(c.diffusion)["t_sampling"] == "uniform"


@pytest.mark.parametrize("key,value,fragment", [
    ("diffusion.t_sampling", "beta", "diffusion.t_sampling='beta' is not one of"),
    ("diffusion.logit_normal_std", 0.0, "diffusion.logit_normal_std=0.0 must be a finite "
     "number > 0"),
    ("diffusion.logit_normal_mean", float("nan"), "diffusion.logit_normal_mean=nan"),
    ("diffusion.logit_normal_mean", "0.5", "diffusion.logit_normal_mean='0.5'"),
    ("diffusion.num_train_timesteps", 1000, "t_sampling='logit_normal' draws continuous t"),
    ("diffusion.schedule", "sigmoid", "diffusion.schedule='sigmoid' is not one of"),
    ("diffusion.prediction", "velocity", "diffusion.prediction='velocity' is not one of"),
    ("diffusion.loss_weighting", "lognormal", "diffusion.loss_weighting='lognormal'"),
    ("sample.sampler", "rk4", "sample.sampler='rk4' is not one of"),
])
def test_bad_flow_settings_name_the_key(key, value, fragment):
  c = _flow_config(t_sampling="logit_normal")
  section, name = key.split(".")
  del c[section][name]   # (a ConfigDict field keeps its type; a user's JSON config need not)
  c[section][name] = value
  with pytest.raises(config_utils.ConfigError, match=fragment.replace(".", r"\.")
                     .replace("(", r"\(").replace(")", r"\)")):
    config_utils.validate_config(c)


class _FlowSpy:
  """Stands in for the network in the training objective: a zero velocity."""

  def apply(self, variables, z, logsnr, **unused):
    del variables, logsnr, unused
    return jnp.zeros_like(z)


class _ConstantVideoFlowModel:
  """Stands in for a trained flow network whose data is the constant video 0.25: its exact
  velocity u = eps - x along the straight path from z (the VP z) at logsnr."""

  def apply(self, variables, z, logsnr, **unused):
    del variables, unused
    x = jnp.full_like(z, 0.25)
    return d.predict_flow_from_x(z=z, x=x, logsnr=logsnr)


class _CountingModel(_ConstantVideoFlowModel):
  """The same, counting its evaluations at run time."""

  def __init__(self, calls):
    self.calls = calls

  def apply(self, variables, z, logsnr, **unused):
    jax.debug.callback(lambda l: self.calls.append(l), logsnr)
    return super().apply(variables, z, logsnr, **unused)


@pytest.mark.parametrize("sampler_name", ["euler", "heun"])
def test_a_stage_samples_with_the_flow_settings_of_its_config(sampler_name):
  c = _flow_config()
  c.frames, c.height, c.width = 2, 4, 4
  c.model.text_cross_attention = c.model.text_pooled_conditioning = False
  c.model.fps_conditioning = False
  c.sample.update(sampler=sampler_name, num_steps=3, clip="none", guidance_weight=0.0)
  c.sharding.mesh_shape = (1, 1, 1)
  mesh = sharding_lib.create_mesh(c.sharding, jax.devices()[:1])
  calls = []
  stage = stage_lib.Stage(config=c, model=_CountingModel(calls), params={}, step=0,
                          mesh=mesh, param_shardings={}, text_encoder=None)
  out = stage_sampling.sample_stage(stage, key=jax.random.key(0), num_videos=2)
  assert out.shape == (2, 2, 4, 4, 3)
  np.testing.assert_allclose(out, 0.25, atol=1e-5)
  # The config's sampler reaches the sampler: Heun evaluates the model 2N - 1 times, Euler N.
  jax.effects_barrier()
  assert len(calls) == (5 if sampler_name == "heun" else 3)


def test_training_objective_uses_the_flow_settings():
  c = _flow_config(t_sampling="logit_normal", logit_normal_mean=-1.0, logit_normal_std=0.5)
  rng = np.random.default_rng(10)
  n = 256
  video = jnp.asarray(rng.uniform(-1.0, 1.0, (n, 1, 2, 2, 1)), jnp.float32)
  batch = {"video": video, "text_emb": jnp.zeros((n, 3, 4)), "text_mask": jnp.ones((n, 3)),
           "fps": jnp.full((n,), 8.0)}
  spy = _FlowSpy()
  loss, aux = objective.make_loss_fn(c, spy)({}, batch, jax.random.key(0))
  t = np.asarray(aux["t"], np.float64)
  logit = np.log(t) - np.log1p(-t)
  assert abs(logit.mean() + 1.0) < 5 * 0.5 / 16 and abs(logit.std() - 0.5) < 0.15
  np.testing.assert_allclose(np.asarray(aux["logsnr"]), -2 * logit, rtol=1e-4, atol=1e-4)
  # A zero velocity: the loss is the flow-matching MSE mean((eps - x)^2) = E[eps^2] + E[x^2]
  # = 1 + 1/3 for x ~ U[-1, 1] (weighting 'auto' -> 'flow').
  assert abs(float(loss) - 4.0 / 3.0) < 0.1
  # The default config's uniform draws are what the objective draws without the new keys.
  c_old = _flow_config()
  for key in ("t_sampling", "logit_normal_mean", "logit_normal_std"):
    del c_old.diffusion[key]
  _, aux_old = objective.make_loss_fn(c_old, _FlowSpy())({}, batch, jax.random.key(0))
  _, aux_new = objective.make_loss_fn(_flow_config(), _FlowSpy())({}, batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(aux_old["t"]), np.asarray(aux_new["t"]))
  assert abs(np.mean(np.asarray(aux_new["t"])) - 0.5) < 0.1


# --- distillation of flow models ----------------------------------------------------------------

def test_distillation_losses_work_for_flow_models():
  shape = (4, 2, 3, 3, 1)
  data = jnp.asarray(np.random.default_rng(11).uniform(-1.0, 1.0, shape), jnp.float32)
  oracle = _data_oracle(data, "flow")
  # Progressive: the teacher's two DDIM (= Euler) steps of a data oracle stay on its straight
  # path, so the target is the data and the oracle student, answering in u, has no loss.
  kw = dict(teacher_fn=oracle, x=data, key=jax.random.key(3), num_student_steps=4, schedule=RF,
            prediction="flow", weighting="truncated_snr")
  loss, _ = distillation.progressive_distillation_loss(student_fn=oracle, **kw)
  assert float(loss) < 1e-8
  wrong, _ = distillation.progressive_distillation_loss(
      student_fn=lambda z, l, c: 0.9 * oracle(z, l, c), **kw)
  assert float(wrong) > 1e-3
  # Guided: a flow student that outputs the guided combination of the flow teacher's u.
  teacher = _as_flow(_cond_eps_model)
  cond, uncond = {"y": jnp.linspace(-1.0, 1.0, 4)}, {"y": jnp.zeros((4,))}
  w = jnp.array([0.0, 1.0, 2.5, 4.0])

  def student(z, logsnr, c):
    wb = c["w"][:, None, None, None, None]
    return (1 + wb) * teacher(z, logsnr, {"y": c["y"]}) - wb * teacher(z, logsnr, uncond)

  gkw = dict(teacher_fn=teacher, x=data, key=jax.random.key(4), cond=cond, uncond=uncond,
             student_cond=dict(cond, w=w), guidance_weight=w, schedule=RF, prediction="flow")
  loss, _ = distillation.guided_distillation_loss(student_fn=student, **gkw)
  assert float(loss) < 1e-6
  unguided, _ = distillation.guided_distillation_loss(
      student_fn=lambda z, l, c: teacher(z, l, {"y": c["y"]}), **gkw)
  assert float(unguided) > 1e-3
