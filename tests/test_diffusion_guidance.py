"""Tests for vdm_jax.diffusion.guidance: classifier-free guidance, weight schedules, thresholds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion as d

B = 3
SHAPE = (B, 2, 4, 4, 1)  # [B, T, H, W, C]


class _CountingModel:
  """A v-model whose output depends on z, logsnr and a dict cond; counts its (eager) calls."""

  def __init__(self):
    self.batch_sizes = []

  def __call__(self, z, logsnr, cond):
    self.batch_sizes.append(z.shape[0])
    text = cond["text"]  # [B', 5]
    bias = jnp.sum(text, axis=1) * cond["mask"][:, 0]  # [B']
    return 0.3 * z + 0.1 * jnp.tanh(logsnr)[:, None, None, None, None] + bias[
        :, None, None, None, None]


def _inputs():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  logsnr = jnp.array([-3.0, 0.5, 4.0])
  cond = {"text": jnp.asarray(rng.standard_normal((B, 5)), jnp.float32),
          "mask": jnp.ones((B, 1))}
  uncond = {"text": jnp.zeros((B, 5)), "mask": jnp.zeros((B, 1))}
  return z, logsnr, cond, uncond


def test_weight_zero_equals_the_conditional_prediction():
  z, logsnr, cond, uncond = _inputs()
  model = _CountingModel()
  want = model(z, logsnr, cond)
  model.batch_sizes.clear()
  got = d.guided_model_output(model_fn=model, z=z, logsnr=logsnr, cond=cond, uncond=uncond,
                              weight=0.0)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert model.batch_sizes == [B]  # a concrete w = 0 skips the unconditional half
  # A traced w = 0 takes the batched path and still equals the conditional prediction.
  traced = jax.jit(lambda w: d.guided_model_output(model_fn=model, z=z, logsnr=logsnr,
                                                   cond=cond, uncond=uncond, weight=w))
  np.testing.assert_allclose(np.asarray(traced(0.0)), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_guidance_is_one_batched_call_with_the_stated_combination():
  z, logsnr, cond, uncond = _inputs()
  model = _CountingModel()
  c_out, u_out = model(z, logsnr, cond), model(z, logsnr, uncond)
  model.batch_sizes.clear()
  w = 2.5
  got = d.guided_model_output(model_fn=model, z=z, logsnr=logsnr, cond=cond, uncond=uncond,
                              weight=w)
  assert model.batch_sizes == [2 * B]
  np.testing.assert_allclose(np.asarray(got), (1 + w) * np.asarray(c_out) - w * np.asarray(u_out),
                             rtol=1e-5, atol=1e-5)
  # Differently shaped uncond (one shared null embedding): falls back to two calls.
  model.batch_sizes.clear()
  shared = {"text": jnp.zeros((1, 5)), "mask": jnp.zeros((1, 1))}
  two = d.guided_model_output(model_fn=model, z=z, logsnr=logsnr, cond=cond, uncond=shared,
                              weight=w)
  assert model.batch_sizes == [B, B]
  np.testing.assert_allclose(np.asarray(two), np.asarray(got), rtol=1e-5, atol=1e-5)


def test_output_space_combination_equals_eps_space_combination():
  z, logsnr, cond, uncond = _inputs()
  model = _CountingModel()
  w = 4.0
  x, eps = d.predict_x_and_eps(model_fn=model, z=z, logsnr=logsnr, prediction="v", cond=cond,
                               uncond=uncond, guidance_weight=w)
  _, eps_c = d.to_x_and_eps(prediction="v", model_output=model(z, logsnr, cond), z=z,
                            logsnr=logsnr)
  _, eps_u = d.to_x_and_eps(prediction="v", model_output=model(z, logsnr, uncond), z=z,
                            logsnr=logsnr)
  eps_guided = (1 + w) * eps_c - w * eps_u
  np.testing.assert_allclose(np.asarray(eps), np.asarray(eps_guided), rtol=1e-4, atol=1e-4)
  x_from_eps = d.predict_x_from_eps(z=z, eps=eps_guided, logsnr=logsnr)
  np.testing.assert_allclose(np.asarray(x), np.asarray(x_from_eps), rtol=1e-4, atol=1e-4)


def test_guidance_needs_uncond():
  z, logsnr, cond, _ = _inputs()
  with pytest.raises(ValueError, match="unconditional"):
    d.guided_model_output(model_fn=_CountingModel(), z=z, logsnr=logsnr, cond=cond, weight=3.0)


def test_oscillating_schedule_alternates():
  w = [float(d.guidance_weight_at(j, weight=7.0, schedule="oscillating", low=1.0))
       for j in range(8)]
  assert w == [7.0, 1.0, 7.0, 1.0, 7.0, 1.0, 7.0, 1.0]
  w = [float(d.guidance_weight_at(j, weight=7.0, schedule="oscillating", low=0.5,
                                  const_steps=3)) for j in range(8)]
  assert w == [7.0, 7.0, 7.0, 7.0, 0.5, 7.0, 0.5, 7.0]
  # Traced step (inside a loop) gives the same.
  traced = jax.jit(lambda j: d.guidance_weight_at(j, weight=7.0, schedule="oscillating",
                                                  low=1.0))
  assert [float(traced(j)) for j in range(4)] == [7.0, 1.0, 7.0, 1.0]
  assert d.guidance_weight_at(5, weight=3.0, schedule="constant") == 3.0
  with pytest.raises(ValueError, match="not one of"):
    d.guidance_weight_at(0, weight=3.0, schedule="cosine")


def test_dynamic_threshold_matches_imagen_and_stays_in_range():
  x = 3.0 * np.random.default_rng(1).standard_normal((4, 2, 5, 5, 3)).astype(np.float32)
  x[1] = np.clip(x[1], -0.9, 0.9)  # an in-range example next to big ones
  x = jnp.asarray(x)
  p = 0.9
  got = np.asarray(d.dynamic_threshold(x, p))
  assert np.all(np.abs(got) <= 1.0 + 1e-6)
  flat = np.abs(np.asarray(x)).reshape(4, -1)
  s = np.maximum(np.quantile(flat, p, axis=1), 1.0)[:, None, None, None, None]
  np.testing.assert_allclose(got, np.clip(np.asarray(x), -s, s) / s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1], np.asarray(x[1]))  # per-example: left unchanged
  assert np.abs(got[0]).max() == pytest.approx(1.0, abs=1e-6)  # big examples reach +-1


def test_dynamic_threshold_leaves_in_range_samples_unchanged():
  x = np.random.default_rng(2).uniform(-1.0, 1.0, (3, 4, 4, 4, 1)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(d.dynamic_threshold(jnp.asarray(x), 0.995)), x)
  # Only the p-quantile matters: a few outliers above 1 beyond the quantile are just clipped.
  x[:, 0, 0, 0, 0] = 5.0
  got = np.asarray(d.dynamic_threshold(jnp.asarray(x), 0.9))
  np.testing.assert_array_equal(got[:, 1:], np.asarray(x)[:, 1:])
  np.testing.assert_array_equal(got[:, 0, 0, 0, 0], 1.0)


def test_static_threshold_and_eps_recomputed_from_clipped_x():
  z, logsnr, cond, uncond = _inputs()
  big = lambda z, l, c: 5.0 * z + 2.0  # an x-model far outside [-1, 1]
  for clip in ("static", "dynamic"):
    x, eps = d.predict_x_and_eps(model_fn=big, z=z, logsnr=logsnr, prediction="x", clip=clip)
    assert np.all(np.abs(np.asarray(x)) <= 1.0 + 1e-6)
    # eps is consistent with the thresholded x: z = alpha x + sigma eps.
    np.testing.assert_allclose(np.asarray(d.q_sample(x=x, eps=eps, logsnr=logsnr)),
                               np.asarray(z), rtol=1e-4, atol=1e-4)
  x, _ = d.predict_x_and_eps(model_fn=big, z=z, logsnr=logsnr, prediction="x", clip="static")
  np.testing.assert_array_equal(np.asarray(x), np.clip(5.0 * np.asarray(z) + 2.0, -1, 1))
  with pytest.raises(ValueError, match="not one of"):
    d.threshold_x(z, "soft")
