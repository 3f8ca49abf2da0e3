"""Tests for vdm_jax.diffusion.reconstruction and `sample(observation=...)`.

A Gaussian toy: "videos" x [B, 4, 2, 2, 1] ~ N(mu, Sigma) with Sigma = kron(frames, pixels)
correlated across frames (AR(1), rho 0.9) and pixels, so the optimal denoiser
E[x | z_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (z_t - alpha mu) and the
conditionals p(x_b | x_a) and p(x | down(x) = y) are Gaussians in closed form: any gap between
the samples' statistics and them comes from the conditioning method (and the 50-step sampler).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion as d

SCHEDULE = d.LogSNRSchedule("cosine", -20.0, 20.0)
T, H, W = 4, 2, 2
D = T * H * W
SHAPE_1 = (T, H, W, 1)
B = 2048
STEPS = 50
_FRAMES = 0.9 ** np.abs(np.arange(T)[:, None] - np.arange(T)[None])
_PIXELS = 0.5 * np.ones((H * W, H * W)) + 0.5 * np.eye(H * W)
SIGMA = 0.25 * np.kron(_FRAMES, _PIXELS)       # [D, D], D = (t, h, w) flattened
MU = np.linspace(-0.3, 0.3, D)
OBSERVED_FRAMES = np.array([True, True, False, False])
M = np.repeat(OBSERVED_FRAMES, H * W)          # [D] observed entries
NOISE = np.random.default_rng(0).standard_normal((B,) + SHAPE_1).astype(np.float32)


def gaussian_denoiser(z, logsnr, cond=None):
  """E[x | z_t] for x ~ N(MU, SIGMA); z: [B, T, H, W, 1], logsnr: [B]."""
  del cond
  zf = z.reshape(z.shape[0], D)
  a, s = d.alpha_sigma(logsnr)
  cov_z = a[:, None, None]**2 * SIGMA + s[:, None, None]**2 * jnp.eye(D)
  sol = jnp.linalg.solve(cov_z, (zf - a[:, None] * MU)[..., None])[..., 0]
  return (MU + a[:, None] * sol @ SIGMA.T).reshape(z.shape)


# An atypical observation of frames 0 and 1 (1.5 standard deviations along each whitened
# direction), so conditioning moves x_b far from its prior.
X_A = MU[M] + np.linalg.cholesky(SIGMA[np.ix_(M, M)]) @ np.full(M.sum(), 1.5)
_S_AA, _S_BA = SIGMA[np.ix_(M, M)], SIGMA[np.ix_(~M, M)]
COND_MEAN = MU[~M] + _S_BA @ np.linalg.solve(_S_AA, X_A - MU[M])
COND_COV = SIGMA[np.ix_(~M, ~M)] - _S_BA @ np.linalg.solve(_S_AA, _S_BA.T)
_FULL = np.zeros(D)
_FULL[M] = X_A
FRAME_OBS = d.Observation(
    values=jnp.asarray(np.broadcast_to(_FULL.reshape(SHAPE_1), (B,) + SHAPE_1), jnp.float32),
    mask=jnp.asarray(np.broadcast_to(OBSERVED_FRAMES, (B, T))))


@functools.partial(jax.jit, static_argnames=("sampler", "method"))
def _sample(obs, weight, sampler, method):
  return d.sample(model_fn=gaussian_denoiser, shape=(B,) + SHAPE_1, key=jax.random.key(0),
                  num_steps=STEPS, schedule=SCHEDULE, sampler=sampler, prediction="x",
                  init_noise=NOISE, observation=obs, observation_method=method,
                  reconstruction_weight=weight, return_trajectory=True)


def conditional_gap(x):
  """|mean - true mean| + ||cov - true cov||_F of the unobserved frames of samples x."""
  xb = np.asarray(x).reshape(B, D)[:, ~M]
  return (np.linalg.norm(xb.mean(0) - COND_MEAN)
          + np.linalg.norm(np.cov(xb.T) - COND_COV))


def trajectory_inconsistency(traj):
  """Mean over the inner steps of E||x_a - x^_a(z_t)||^2: how well the noisy state explains
  the observation (x^ = the optimal denoiser's prediction at z_t)."""
  grid = np.asarray(d.time_grid(STEPS))[::-1]
  errs = []
  for i in range(1, STEPS):
    xh = np.asarray(gaussian_denoiser(traj[i], jnp.full((B,), SCHEDULE(grid[i]))))
    errs.append(((xh.reshape(B, D)[:, M] - X_A)**2).sum(1).mean())
  return float(np.mean(errs))


@pytest.fixture(scope="module", params=["ddim", "ddpm"])
def runs(request):
  sampler = request.param
  out = {"replacement": _sample(FRAME_OBS, 0.0, sampler, "replacement")}
  for w in (0.0, 1.0, 2.0, 5.0):
    out[w] = _sample(FRAME_OBS, w, sampler, "reconstruction")
  return sampler, {k: (np.asarray(x), traj) for k, (x, traj) in out.items()}


def test_both_methods_keep_the_observed_frames_exactly(runs):
  _, out = runs
  want = np.asarray(FRAME_OBS.values)[:, :2]
  for key, (x, _) in out.items():
    np.testing.assert_array_equal(x[:, :2], want, err_msg=str(key))
    assert np.all(np.isfinite(x))
  # Replacement redraws the observed part of z each step: its z_a moves with the noise.
  traj = np.asarray(out["replacement"][1])
  assert np.std(traj[STEPS // 2][:, :2]) > 0.1


def test_reconstruction_guidance_samples_the_true_conditional_better(runs):
  sampler, out = runs
  gaps = {k: conditional_gap(x) for k, (x, _) in out.items()}
  # Measured (B = 2048): replacement 2.3 / 1.6, w_r = 0: 2.4 / 1.6, w_r = 5: 0.18 / 0.39
  # (DDIM / DDPM); the unconditional prior is 4.5 away.
  assert gaps[5.0] < 0.5 * gaps["replacement"], (sampler, gaps)
  assert gaps[5.0] < 0.5 * gaps[0.0], (sampler, gaps)
  assert gaps[2.0] < gaps[1.0] < gaps[0.0], (sampler, gaps)


def test_noisy_states_explain_the_observation_better_as_w_r_grows(runs):
  _, out = runs
  errs = [trajectory_inconsistency(out[w][1]) for w in (0.0, 1.0, 2.0, 5.0)]
  assert all(a > b for a, b in zip(errs, errs[1:])), errs


_DOWN_X = (MU + np.linalg.cholesky(SIGMA) @ np.random.default_rng(5).standard_normal(D))
_Y = np.asarray(d.downsample(jnp.asarray(_DOWN_X.reshape((1,) + SHAPE_1), jnp.float32), 2))
_A = np.kron(np.eye(T), np.full((1, H * W), 1.0 / (H * W)))   # the average pool as a matrix


@jax.jit
def _sample_down(weight):
  obs = d.Observation(values=jnp.broadcast_to(_Y, (B, T, 1, 1, 1)), factor=2)
  return d.sample(model_fn=gaussian_denoiser, shape=(B,) + SHAPE_1, key=jax.random.key(0),
                  num_steps=STEPS, schedule=SCHEDULE, prediction="x", init_noise=NOISE,
                  observation=obs, reconstruction_weight=weight)


def test_downsampled_observation_is_matched_by_guided_samples():
  k = SIGMA @ _A.T @ np.linalg.inv(_A @ SIGMA @ _A.T)
  y = _Y.reshape(T)
  true_mean = MU + k @ (y - _A @ MU)
  errs, mean_gaps = [], []
  for w in (0.0, 1.0, 2.0, 5.0):
    x = np.asarray(_sample_down(w))
    down = np.asarray(d.downsample(jnp.asarray(x), 2)).reshape(B, T)
    errs.append(np.sqrt(((down - y)**2).sum(1).mean()))
    mean_gaps.append(np.linalg.norm(x.reshape(B, D).mean(0) - true_mean))
  # Measured: RMS errors 0.99, 0.37, 0.12, 0.008; mean gaps 1.24 ... 0.023.
  assert all(a > b for a, b in zip(errs, errs[1:])), errs
  assert errs[-1] < 0.05 * errs[0], errs
  assert mean_gaps[-1] < 0.1 < mean_gaps[0], mean_gaps


def test_correction_matches_the_closed_form_for_a_linear_guided_model():
  # model_fn(z) = M_c z (cond) or M_u z (uncond), x-prediction: the guided x^ = G z with
  # G = (1 + w) M_c - w M_u, so grad_z ||m (y - G z)||^2 = -2 G^T m (y - G z) and
  # x~_b = x^_b + w_r alpha_t [G^T m (y - G z)]_b, x~_a = y_a.
  rng = np.random.default_rng(3)
  m_c, m_u = (rng.normal(0, 0.3, (D, D)).astype(np.float32) for _ in range(2))

  def model_fn(z, logsnr, cond):
    del logsnr
    return jnp.einsum("bij,bj->bi", cond["m"], z.reshape(z.shape[0], D)).reshape(z.shape)

  z = jnp.asarray(rng.standard_normal((2,) + SHAPE_1), jnp.float32)
  y = jnp.asarray(rng.standard_normal((2,) + SHAPE_1), jnp.float32)
  mask = jnp.asarray([[1, 0, 1, 0], [0, 0, 1, 1]], bool)
  logsnr = jnp.asarray([0.5, -1.0], jnp.float32)
  wg, wr = 1.5, jnp.asarray([2.0, 3.0])
  x, eps = d.reconstruction_guided_prediction(
      model_fn=model_fn, z=z, logsnr=logsnr, prediction="x",
      observation=d.Observation(values=y, mask=mask), weight=wr,
      cond={"m": jnp.broadcast_to(m_c, (2, D, D))},
      uncond={"m": jnp.broadcast_to(m_u, (2, D, D))}, guidance_weight=wg)
  g = (1 + wg) * m_c - wg * m_u
  alpha, _ = d.alpha_sigma(np.asarray(logsnr))
  for i in range(2):
    mi = np.repeat(np.asarray(mask[i]), H * W).astype(np.float32)
    zi, yi = np.asarray(z[i]).reshape(D), np.asarray(y[i]).reshape(D)
    x_hat = g @ zi
    want = x_hat + float(wr[i]) * float(alpha[i]) * (g.T @ (mi * (yi - x_hat)))
    want = np.where(mi > 0, yi, want)
    np.testing.assert_allclose(np.asarray(x[i]).reshape(D), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(eps), np.asarray(d.predict_eps_from_x(
      z=z, x=x, logsnr=logsnr)), atol=1e-5)


def test_observation_errors_are_explained():
  kwargs = dict(model_fn=gaussian_denoiser, shape=(2,) + SHAPE_1, key=jax.random.key(0),
                num_steps=2, schedule=SCHEDULE, prediction="x")
  ones = jnp.ones((2,) + SHAPE_1)
  with pytest.raises(ValueError, match="needs an observation of entries"):
    d.sample(**kwargs, observation=d.Observation(values=jnp.ones((2, T, 1, 1, 1)), factor=2),
             observation_method="replacement")
  with pytest.raises(ValueError, match="need \\(2, 4, 1, 1, 1\\)"):
    d.sample(**kwargs, observation=d.Observation(values=ones, factor=2))
  with pytest.raises(ValueError, match="leading-dims prefix"):
    d.sample(**kwargs, observation=d.Observation(values=ones, mask=jnp.ones((2, 3), bool)))
  with pytest.raises(ValueError, match="not one of"):
    d.sample(**kwargs, observation=d.Observation(values=ones), observation_method="inpaint")
