"""Tests for vdm_jax.diffusion.schedules: logSNR schedules, inverses, alpha/sigma, q_sample."""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vdm_jax import diffusion as d


def _cfg(**overrides):
  c = ml_collections.ConfigDict(dict(schedule="cosine", logsnr_min=-20.0, logsnr_max=20.0,
                                     schedule_base_resolution=64))
  c.update(overrides)
  return c


SCHEDULES = {
    "cosine": d.schedule_from_config(_cfg()),
    "cosine_narrow": d.LogSNRSchedule("cosine", -10.0, 15.0),
    "shifted_256": d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=256),
    "shifted_32": d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=32),
    "linear": d.schedule_from_config(_cfg(schedule="linear")),
}
T = np.linspace(0.0, 1.0, 2001, dtype=np.float32)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_is_strictly_decreasing(name):
  logsnr = np.asarray(SCHEDULES[name](T))
  assert np.all(np.isfinite(logsnr))
  assert np.all(np.diff(logsnr) < 0), "logSNR must decrease in t"


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_hits_its_endpoints(name):
  s = SCHEDULES[name]
  np.testing.assert_allclose(float(s(0.0)), s.logsnr_at_t0, atol=1e-5)
  np.testing.assert_allclose(float(s(1.0)), s.logsnr_at_t1, atol=1e-5)
  # The ends are the configured range, moved by the shift only.
  np.testing.assert_allclose(s.logsnr_at_t0 - s.shift, s.logsnr_max)
  np.testing.assert_allclose(s.logsnr_at_t1 - s.shift, s.logsnr_min)


def test_unshifted_endpoints_are_the_configured_range():
  s = SCHEDULES["cosine"]
  assert float(s(0.0)) == pytest.approx(20.0, abs=1e-5)
  assert float(s(1.0)) == pytest.approx(-20.0, abs=1e-5)
  s = SCHEDULES["cosine_narrow"]
  assert float(s(0.0)) == pytest.approx(15.0, abs=1e-5)
  assert float(s(1.0)) == pytest.approx(-10.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_inverse_inverts(name):
  s = SCHEDULES[name]
  np.testing.assert_allclose(np.asarray(s.inverse(s(T))), T, atol=2e-6)
  logsnr = np.linspace(s.logsnr_at_t1, s.logsnr_at_t0, 301).astype(np.float32)
  # Near t = 1 the cosine has |dlogsnr/dt| ~ 2 / (1 - t) ~ 3e4 at logsnr = -20, so the float32
  # spacing of t there (6e-8) alone moves logsnr by ~2e-3: hence atol 5e-3 for this direction.
  np.testing.assert_allclose(np.asarray(s(s.inverse(logsnr))), logsnr, atol=5e-3)
  # And t(logsnr) against an independent float64 formula.
  l64 = logsnr.astype(np.float64) - s.shift
  if s.kind == "cosine":
    t_min = 2 / np.pi * np.arctan(np.exp(-0.5 * s.logsnr_max))
    t_max = 2 / np.pi * np.arctan(np.exp(-0.5 * s.logsnr_min))
    ref = (2 / np.pi * np.arctan(np.exp(-0.5 * l64)) - t_min) / (t_max - t_min)
  else:
    ref = (s.logsnr_max - l64) / (s.logsnr_max - s.logsnr_min)
  np.testing.assert_allclose(np.asarray(s.inverse(logsnr)), ref, atol=1e-6)


def test_cosine_is_the_clipped_cosine_formula():
  # Independent float64 reference: logsnr = -2 log tan(pi/2 * (t_min + t (t_max - t_min))),
  # with t_min, t_max chosen so the ends are logsnr_max and logsnr_min.
  for lo, hi in ((-20.0, 20.0), (-10.0, 15.0)):
    t_min = 2 / np.pi * np.arctan(np.exp(-0.5 * hi))
    t_max = 2 / np.pi * np.arctan(np.exp(-0.5 * lo))
    t = T.astype(np.float64)
    ref = -2 * np.log(np.tan(0.5 * np.pi * (t_min + t * (t_max - t_min))))
    got = np.asarray(d.LogSNRSchedule("cosine", lo, hi)(T))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)
  # Away from the ends the clipping barely matters: it is -2 log tan(pi t / 2).
  t = np.linspace(0.05, 0.95, 91)
  np.testing.assert_allclose(np.asarray(SCHEDULES["cosine"](t)),
                             -2 * np.log(np.tan(0.5 * np.pi * t)), atol=2e-3)


@pytest.mark.parametrize("resolution", [32, 128, 256, 1024])
def test_shifted_cosine_is_cosine_shifted_by_two_log_ratio(resolution):
  shifted = d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=resolution)
  shift = 2 * math.log(64 / resolution)
  assert shifted.shift == pytest.approx(shift)
  interior = T[1:-1]
  diff = np.asarray(shifted(interior)) - np.asarray(SCHEDULES["cosine"](interior))
  np.testing.assert_allclose(diff, shift, atol=1e-5)
  assert float(shifted(0.0)) == pytest.approx(20.0 + shift, abs=1e-5)
  assert float(shifted(1.0)) == pytest.approx(-20.0 + shift, abs=1e-5)


def test_linear_schedule_is_linear():
  s = SCHEDULES["linear"]
  np.testing.assert_allclose(np.asarray(s(T)), 20.0 - 40.0 * T, atol=1e-5)


def test_alpha_sigma():
  logsnr = np.linspace(-30, 30, 121).astype(np.float32)
  alpha, sigma = d.alpha_sigma(logsnr)
  alpha, sigma = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(alpha**2, 1 / (1 + np.exp(-logsnr.astype(np.float64))), rtol=1e-5)
  np.testing.assert_allclose(np.log(alpha**2 / sigma**2), logsnr, rtol=1e-5, atol=1e-5)


def test_schedule_from_config_errors_are_clear():
  with pytest.raises(ValueError, match="not one of"):
    d.schedule_from_config(_cfg(schedule="sigmoid"))
  with pytest.raises(ValueError, match="resolution"):
    d.schedule_from_config(_cfg(schedule="shifted_cosine"))
  with pytest.raises(ValueError, match="must be below"):
    d.schedule_from_config(_cfg(logsnr_min=5.0, logsnr_max=5.0))
  with pytest.raises(ValueError, match="positive"):
    d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=0)


def test_schedule_is_hashable_static_arg():
  s1 = d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=128)
  s2 = d.schedule_from_config(_cfg(schedule="shifted_cosine"), resolution=128)
  assert s1 == s2 and hash(s1) == hash(s2)
  f = jax.jit(lambda t, s: s(t), static_argnums=1)
  np.testing.assert_allclose(np.asarray(f(T, s1)), np.asarray(s1(T)), rtol=1e-6, atol=1e-6)


def test_time_grid():
  np.testing.assert_allclose(d.time_grid(4), [0.0, 0.25, 0.5, 0.75, 1.0])
  with pytest.raises(ValueError):
    d.time_grid(0)


class QSampleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_q_sample_matches_reference(self):
    rng = np.random.default_rng(0)
    shape = (4, 2, 3, 3, 2)  # [B, T, H, W, C]
    x = jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    logsnr = jnp.array([-20.0, -1.5, 2.0, 20.0])
    z = self.variant(lambda x, eps, l: d.q_sample(x=x, eps=eps, logsnr=l))(x, eps, logsnr)
    chex.assert_shape(z, shape)
    l64 = np.asarray(logsnr, np.float64)[:, None, None, None, None]
    ref = (np.sqrt(1 / (1 + np.exp(-l64))) * np.asarray(x)
           + np.sqrt(1 / (1 + np.exp(l64))) * np.asarray(eps))
    np.testing.assert_allclose(np.asarray(z), ref, rtol=1e-5, atol=1e-6)

  def test_q_sample_rejects_bad_logsnr_shape(self):
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
      d.q_sample(x=x, eps=x, logsnr=jnp.zeros((3,)))
