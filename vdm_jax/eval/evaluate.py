"""One call that scores a set of generated moving-shapes videos: FVD, caption accuracy, consistency.

`evaluate_videos` is what the `eval` mode of main.py runs on a sampled set; it returns a dict and,
given `out_path`, writes it as JSON (NaN written as null).
"""
import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from vdm_jax.eval import accuracy
from vdm_jax.eval import consistency
from vdm_jax.eval import detectors
from vdm_jax.eval import fvd as fvd_lib
from vdm_jax.eval import i3d


def to_uint8(videos, value_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """uint8 videos pass through; float videos in `value_range` -> rounded uint8 [0, 255]."""
  videos = np.asarray(videos)
  if videos.dtype == np.uint8:
    return videos
  if not np.issubdtype(videos.dtype, np.floating):
    raise ValueError(f"videos must be uint8 or float, got {videos.dtype}")
  lo, hi = value_range
  return np.clip(np.round((videos - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def extractor_from_config(eval_cfg) -> fvd_lib.I3DFeatureExtractor:
  """The I3D feature extractor of the `eval` config section (i3d_path, i3d_batch_size)."""
  return fvd_lib.I3DFeatureExtractor(checkpoint_path=eval_cfg.get("i3d_path", "") or None,
                                     batch_size=int(eval_cfg.get("i3d_batch_size", 16)))


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def _check_videos(videos, name: str) -> np.ndarray:
  videos = to_uint8(videos)
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"{name} must be [N, T, H, W, 3], got shape {videos.shape}")
  return videos


def fvd_of(videos: np.ndarray, real_videos: np.ndarray,
           extractor: fvd_lib.I3DFeatureExtractor, repeat_short: bool = True) -> Dict[str, Any]:
  """FVD between two uint8 sets, stretching clips shorter than I3D's 9 frames if allowed."""
  if min(len(videos), len(real_videos)) < 2:
    return dict(fvd=None, fvd_note="FVD needs at least 2 videos in each set")
  k = max(-(-i3d.MIN_FRAMES // v.shape[1]) for v in (videos, real_videos))
  if k > 1 and not repeat_short:
    raise ValueError(f"clips of {min(videos.shape[1], real_videos.shape[1])} frames are too "
                     f"short for I3D ({i3d.MIN_FRAMES}); set eval.fvd_repeat_short=True")
  a = fvd_lib.repeat_frames(videos, i3d.MIN_FRAMES)
  b = fvd_lib.repeat_frames(real_videos, i3d.MIN_FRAMES)
  out = dict(fvd=fvd_lib.fvd(extractor.features(a), extractor.features(b)),
             fvd_num_videos=[len(a), len(b)], fvd_frames=[a.shape[1], b.shape[1]])
  if min(len(a), len(b)) <= i3d.NUM_CLASSES:
    out["fvd_note"] = ("fewer videos than I3D features (400): rank-deficient covariances; "
                       "compare only with FVDs of equally sized sets")
  return out


def evaluate_videos(videos, targets: Sequence[Any], real_videos=None,
                    extractor: Optional[fvd_lib.I3DFeatureExtractor] = None, *,
                    fps: Optional[float] = None, compute_fvd: bool = True,
                    value_range: Tuple[float, float] = (-1.0, 1.0), repeat_short: bool = True,
                    out_path: Optional[str] = None) -> Dict[str, Any]:
  """Scores generated videos against what they were prompted with and against real clips.

  Args:
    videos: generated videos [N, T, H, W, 3], uint8 or float in `value_range`.
    targets: N prompts: ClipSpecs, captions or labels (see `accuracy.as_target`).
    real_videos: real clips [M, T', H', W', 3] for FVD (and their consistency as a reference).
    extractor: an I3DFeatureExtractor; None = one with the packaged weights (if FVD is computed).
    fps: frame rate of `videos` (needed to read speeds); None = the fps of ClipSpec targets.
    compute_fvd: False skips FVD (and loading I3D).
    value_range: range of float videos.
    repeat_short: stretch clips shorter than 9 frames in time for I3D.
    out_path: if given, the result is also written there as JSON (e.g. ".../eval.json").
  Returns:
    {"num_videos", "frames", "height", "width", "fps", "caption_accuracy" {attribute: acc, "all"},
     "consistency" {metric: mean}, "real_consistency" (with real videos), "fvd" (+ details)}.
  """
  videos = _check_videos(videos, "videos")
  if len(targets) != len(videos):
    raise ValueError(f"{len(videos)} videos but {len(targets)} targets: one prompt per video")
  if fps is None:
    spec_fps = {t.fps for t in targets if hasattr(t, "fps")}
    if len(spec_fps) != 1:
      raise ValueError("pass fps=: the videos' frame rate is needed to read speeds")
    fps = spec_fps.pop()
  n, t, h, w, _ = videos.shape
  dets = detectors.detect_batch(videos, fps)
  result = dict(num_videos=n, frames=t, height=h, width=w, fps=float(fps),
                caption_accuracy=accuracy.caption_accuracy(dets, targets, with_motion=t > 1),
                consistency=consistency.summarize(
                    [consistency.clip_consistency(v, d) for v, d in zip(videos, dets)]))
  if real_videos is not None:
    real_videos = _check_videos(real_videos, "real_videos")
    real_dets = detectors.detect_batch(real_videos, fps)
    result["real_consistency"] = consistency.summarize(
        [consistency.clip_consistency(v, d) for v, d in zip(real_videos, real_dets)])
    if compute_fvd:
      extractor = extractor or fvd_lib.I3DFeatureExtractor()
      result.update(fvd_of(videos, real_videos, extractor, repeat_short))
  result = _jsonable(result)
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
