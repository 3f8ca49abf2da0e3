"""Tests for vdm_jax.diffusion.parameterization: every eps/x/v conversion round-trips."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion as d

# One logsnr per example, including the extremes of the default range.
LOGSNRS = np.array([-20.0, -8.0, -1.0, 0.0, 3.0, 10.0, 20.0], np.float32)
SHAPE = (len(LOGSNRS), 2, 3, 4)  # [B, ...]


def _randoms(seed, n, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(SHAPE), dtype) for _ in range(n)]


def _round_trips(z, a, logsnr):
  """Each entry: (original, value after a round trip through another parameterization)."""
  kw = dict(z=z, logsnr=logsnr)
  out = {
      "x->eps->x": d.predict_x_from_eps(eps=d.predict_eps_from_x(x=a, **kw), **kw),
      "eps->x->eps": d.predict_eps_from_x(x=d.predict_x_from_eps(eps=a, **kw), **kw),
      "x->v->x": d.predict_x_from_v(v=d.predict_v_from_x(x=a, **kw), **kw),
      "v->x->v": d.predict_v_from_x(x=d.predict_x_from_v(v=a, **kw), **kw),
      "eps->v->eps": d.predict_eps_from_v(v=d.predict_v_from_eps(eps=a, **kw), **kw),
      "v->eps->v": d.predict_v_from_eps(eps=d.predict_eps_from_v(v=a, **kw), **kw),
  }
  for pred in d.PREDICTIONS:
    x, eps = d.to_x_and_eps(prediction=pred, model_output=a, **kw)
    out[f"{pred}->(x,eps)->{pred}"] = d.from_x_and_eps(prediction=pred, x=x, eps=eps,
                                                      logsnr=logsnr)
  return out


def _consistency(x, eps, logsnr):
  """From a true pair (x, eps): z and v, and every way to recover x, eps, v from z."""
  z = d.q_sample(x=x, eps=eps, logsnr=logsnr)
  v = d.predict_v_from_x_and_eps(x=x, eps=eps, logsnr=logsnr)
  kw = dict(z=z, logsnr=logsnr)
  return {
      "z": (d.predict_z_from_x_and_eps(x=x, eps=eps, logsnr=logsnr), z),
      "x_from_v": (d.predict_x_from_v(v=v, **kw), x),
      "eps_from_v": (d.predict_eps_from_v(v=v, **kw), eps),
      "v_from_x": (d.predict_v_from_x(x=x, **kw), v),
      "v_from_eps": (d.predict_v_from_eps(eps=eps, **kw), v),
      "x_from_eps": (d.predict_x_from_eps(eps=eps, **kw), x),
      "eps_from_x": (d.predict_eps_from_x(x=x, **kw), eps),
  }


class ConversionsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_round_trips_float32(self):
    z, a = _randoms(0, 2)
    got = self.variant(_round_trips)(z, a, jnp.asarray(LOGSNRS))
    # A round trip goes through a map that scales by up to e^(|logsnr|/2) and back, so float32
    # roundoff (1.2e-7) can be amplified by that factor: the tolerance is scaled per example.
    amp = np.exp(0.5 * np.abs(LOGSNRS))[:, None, None, None]
    for name, value in got.items():
      err = np.abs(np.asarray(value) - np.asarray(a))
      assert np.all(err <= 1e-6 + 4e-7 * amp * (1 + np.abs(np.asarray(z)))), (
          name, float(err.max()))

  def test_round_trips_float64_are_exact(self):
    with jax.enable_x64(True):
      z, a = _randoms(1, 2, jnp.float64)
      got = _round_trips(z, a, jnp.asarray(LOGSNRS, jnp.float64))
      for name, value in got.items():
        chex.assert_trees_all_close(value, a, atol=1e-9, custom_message=name)

  @chex.variants(with_jit=True, without_jit=True)
  def test_conversions_recover_the_true_triple(self):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1.0, 1.0, SHAPE), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
    logsnr = jnp.asarray(LOGSNRS)
    got = self.variant(_consistency)(x, eps, logsnr)
    amp = np.exp(0.5 * np.abs(LOGSNRS))[:, None, None, None]
    for name, (value, want) in got.items():
      err = np.abs(np.asarray(value) - np.asarray(want))
      # eps from x (high logsnr) and x from eps (low logsnr) divide by a small sigma or alpha.
      assert np.all(err <= 1e-6 + 1e-6 * amp), (name, float(err.max()))
    # The well-conditioned v-conversions are accurate at every logsnr.
    for name in ("x_from_v", "eps_from_v", "z"):
      value, want = got[name]
      np.testing.assert_allclose(np.asarray(value), np.asarray(want), atol=5e-6)

  def test_v_definition(self):
    x, eps = _randoms(4, 2)
    logsnr = jnp.asarray(LOGSNRS)
    alpha = np.sqrt(1 / (1 + np.exp(-LOGSNRS.astype(np.float64))))[:, None, None, None]
    sigma = np.sqrt(1 / (1 + np.exp(LOGSNRS.astype(np.float64))))[:, None, None, None]
    v = d.predict_v_from_x_and_eps(x=x, eps=eps, logsnr=logsnr)
    np.testing.assert_allclose(np.asarray(v), alpha * np.asarray(eps) - sigma * np.asarray(x),
                               rtol=1e-5, atol=1e-6)

  def test_scalar_logsnr_broadcasts(self):
    z, x = _randoms(5, 2)
    per_example = d.predict_v_from_x(z=z, x=x, logsnr=jnp.full((SHAPE[0],), 1.5))
    scalar = d.predict_v_from_x(z=z, x=x, logsnr=jnp.float32(1.5))
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(scalar), rtol=1e-6)

  def test_errors(self):
    z, x = _randoms(6, 2)
    with pytest.raises(ValueError, match="not one of"):
      d.to_x_and_eps(prediction="score", model_output=x, z=z, logsnr=jnp.asarray(LOGSNRS))
    with pytest.raises(ValueError, match="same shape"):
      d.predict_x_from_v(z=z, v=x[:, :1], logsnr=jnp.asarray(LOGSNRS))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
      d.predict_x_from_v(z=z, v=x, logsnr=jnp.zeros((2,)))
