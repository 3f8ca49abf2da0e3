"""Tests for vdm_jax.diffusion.losses: oracle loss, weightings, discrete times, example weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion as d

SCHEDULE = d.LogSNRSchedule("cosine", -20.0, 20.0)
SHAPE = (64, 2, 3, 3, 1)  # [B, T, H, W, C]


def _data(seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, SHAPE), jnp.float32)


def _oracle(x, prediction):
  """A model that knows the clean batch x and answers in `prediction` space."""
  def model_fn(z, logsnr, cond):
    del cond
    if prediction == "x":
      return x
    if prediction == "eps":
      return d.predict_eps_from_x(z=z, x=x, logsnr=logsnr)
    if prediction == "flow":
      return d.predict_flow_from_x(z=z, x=x, logsnr=logsnr)
    return d.predict_v_from_x(z=z, x=x, logsnr=logsnr)
  return model_fn


class _Recorder:
  """A fixed non-oracle model that remembers its inputs (tests run it eagerly)."""

  def __init__(self):
    self.calls = []

  def __call__(self, z, logsnr, cond):
    self.calls.append((np.asarray(z, np.float64), np.asarray(logsnr, np.float64), cond))
    return 0.7 * z + 0.05 * jnp.tanh(logsnr)[:, None, None, None, None]


def _reference_errors(rec_call, x, out, prediction):
  """float64 x-, eps-, v- and flow-space (u = eps - x) MSEs per example from the recorded model
  inputs."""
  z, logsnr, _ = rec_call
  x = np.asarray(x, np.float64)
  out = np.asarray(out, np.float64)
  l = logsnr[:, None, None, None, None]
  alpha, sigma = np.sqrt(1 / (1 + np.exp(-l))), np.sqrt(1 / (1 + np.exp(l)))
  eps = (z - alpha * x) / sigma
  v = alpha * eps - sigma * x
  if prediction == "x":
    x_hat = out
  elif prediction == "eps":
    x_hat = (z - sigma * out) / alpha
  elif prediction == "flow":   # z_rf = z / (alpha + sigma) = x + t u, t = sigma / (alpha + sigma)
    x_hat = (z - sigma * out) / (alpha + sigma)
  else:
    x_hat = alpha * z - sigma * out
  eps_hat = (z - alpha * x_hat) / sigma
  v_hat = alpha * eps_hat - sigma * x_hat
  mse = lambda a, b: np.mean(np.square(a - b).reshape(len(a), -1), axis=1)
  return (mse(x_hat, x), mse(eps_hat, eps), mse(v_hat, v), mse(eps_hat - x_hat, eps - x),
          np.exp(logsnr))


@pytest.mark.parametrize("prediction", d.PREDICTIONS)
@pytest.mark.parametrize("weighting", d.WEIGHTINGS)
def test_oracle_model_has_zero_loss(prediction, weighting):
  x = _data()
  loss, aux = d.diffusion_loss(model_fn=_oracle(x, prediction), x=x, key=jax.random.key(1),
                               schedule=SCHEDULE, prediction=prediction, weighting=weighting)
  # x-prediction is exact; eps and v oracles carry float32 roundoff of the conversions.
  assert float(loss) <= (0.0 if prediction == "x" else 1e-5), float(loss)
  assert aux["loss_per_example"].shape == (SHAPE[0],)


@pytest.mark.parametrize("prediction", d.PREDICTIONS)
def test_weightings_relate_as_stated(prediction):
  x = _data(2)
  key = jax.random.key(3)
  per = {}
  rec = _Recorder()
  for weighting in d.WEIGHTINGS:
    _, aux = d.diffusion_loss(model_fn=rec, x=x, key=key, schedule=SCHEDULE,
                              prediction=prediction, weighting=weighting)
    per[weighting] = np.asarray(aux["loss_per_example"], np.float64)
    x_mse_lib = np.asarray(aux["x_mse"], np.float64)
  out = rec(jnp.asarray(rec.calls[0][0], jnp.float32), jnp.asarray(rec.calls[0][1]), None)
  x_mse, eps_mse, v_mse, u_mse, snr = _reference_errors(rec.calls[0], x, out, prediction)
  # The same key gives the same t and noise for every weighting.
  for call in rec.calls[1:]:
    np.testing.assert_array_equal(call[0], rec.calls[0][0])
  np.testing.assert_allclose(x_mse_lib, x_mse, rtol=1e-3)
  np.testing.assert_allclose(per["snr"], x_mse * snr, rtol=1e-3)
  np.testing.assert_allclose(per["snr"], eps_mse, rtol=1e-3)
  np.testing.assert_allclose(per["truncated_snr"], x_mse * np.maximum(snr, 1.0), rtol=1e-3)
  np.testing.assert_allclose(per["v_mse"], x_mse * (1.0 + snr), rtol=1e-3)
  np.testing.assert_allclose(per["v_mse"], v_mse, rtol=1e-3)
  # Min-SNR-5 (Hang et al.): the v-MSE times min(SNR, 5) / (1 + SNR), i.e. eps-MSE times
  # min(SNR, 5) / SNR.
  np.testing.assert_allclose(per["min_snr"], v_mse * np.minimum(snr, 5.0) / (1.0 + snr),
                             rtol=1e-3)
  np.testing.assert_allclose(per["min_snr"], eps_mse * np.minimum(snr, 5.0) / snr, rtol=1e-3)
  # Flow matching: the MSE on u = eps - x, i.e. x-MSE times (1 + sqrt(SNR))^2 = 1 / t^2.
  np.testing.assert_allclose(per["flow"], u_mse, rtol=1e-3)
  np.testing.assert_allclose(per["flow"], x_mse * (1.0 + np.sqrt(snr))**2, rtol=1e-3)
  own = {"x": x_mse, "eps": eps_mse, "v": v_mse, "flow": u_mse}[prediction]
  np.testing.assert_allclose(per["constant"], own, rtol=1e-3)
  # 'auto': the flow-matching loss for flow models, v-MSE (the old default) for the others.
  np.testing.assert_array_equal(per["auto"], per["flow" if prediction == "flow" else "v_mse"])


def test_loss_weight_function():
  logsnr = jnp.array([-20.0, -2.0, 0.0, 3.0, 20.0])
  snr = np.exp(np.asarray(logsnr, np.float64))
  np.testing.assert_allclose(d.loss_weight(logsnr, "constant"), 1.0)
  np.testing.assert_allclose(d.loss_weight(logsnr, "constant", prediction="eps"), snr, rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "constant", prediction="v"), 1 + snr,
                             rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "snr"), snr, rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "truncated_snr"), np.maximum(snr, 1),
                             rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "v_mse"), 1 + snr, rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "min_snr"), np.minimum(snr, 5.0), rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "flow"), (1 + np.sqrt(snr))**2, rtol=1e-5)
  np.testing.assert_allclose(d.loss_weight(logsnr, "constant", prediction="flow"),
                             (1 + np.sqrt(snr))**2, rtol=1e-5)
  with pytest.raises(ValueError, match="not one of"):
    d.loss_weight(logsnr, "p2")


def test_discrete_steps_lie_on_the_grid():
  n = 10
  t = np.asarray(d.sample_t(jax.random.key(4), 4096, num_discrete_steps=n))
  k = t * n
  np.testing.assert_allclose(k, np.round(k), atol=1e-5)
  assert set(np.round(k).astype(int)) == set(range(1, n + 1))  # all of 1/N..1, never 0
  t_cont = np.asarray(d.sample_t(jax.random.key(4), 4096))
  assert t_cont.min() >= 0.0 and t_cont.max() <= 1.0
  assert np.mean(np.abs(t_cont * n - np.round(t_cont * n)) > 1e-3) > 0.9  # continuous: off-grid
  # ... and the loss uses them.
  x = _data()
  _, aux = d.diffusion_loss(model_fn=_oracle(x, "x"), x=x, key=jax.random.key(5),
                            schedule=SCHEDULE, prediction="x", num_discrete_steps=n)
  k = np.asarray(aux["t"]) * n
  np.testing.assert_allclose(k, np.round(k), atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["logsnr"]), np.asarray(SCHEDULE(aux["t"])),
                             rtol=1e-6)


def test_example_weight_masks_examples_and_loss_is_jittable():
  x = _data(6)
  rec = lambda z, logsnr, cond: 0.5 * z + cond[:, None, None, None, None]
  cond = jnp.linspace(-1.0, 1.0, SHAPE[0])
  mask = (jnp.arange(SHAPE[0]) % 3 == 0).astype(jnp.float32)
  fn = jax.jit(lambda x, key, w: d.diffusion_loss(model_fn=rec, x=x, key=key, cond=cond,
                                                  schedule=SCHEDULE, example_weight=w))
  loss, aux = fn(x, jax.random.key(7), mask)
  per = np.asarray(aux["loss_per_example"])
  np.testing.assert_allclose(float(loss), per[np.asarray(mask) > 0].mean(), rtol=1e-5)
  loss_all, _ = fn(x, jax.random.key(7), jnp.ones(SHAPE[0]))
  np.testing.assert_allclose(float(loss_all), per.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="one weight per example"):
    fn(x, jax.random.key(7), jnp.ones(3))


def test_loss_rejects_wrong_output_shape():
  x = _data()
  with pytest.raises(ValueError, match="data shape"):
    d.diffusion_loss(model_fn=lambda z, l, c: z[:, :1], x=x, key=jax.random.key(0),
                     schedule=SCHEDULE)
