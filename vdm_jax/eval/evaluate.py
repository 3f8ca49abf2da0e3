"""One call that scores a set of generated videos with the evaluators `eval.metrics` chooses.

`evaluate_videos` is what the `eval` mode of main.py runs on a sampled set; it returns a dict
(the figures of every chosen evaluator, see `evaluators`) and, given `out_path`, writes it as
JSON (NaN written as null, see `jsonable`).
"""
import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.eval import evaluators


def to_uint8(videos, value_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """uint8 videos pass through; float videos in `value_range` -> rounded uint8 [0, 255]."""
  videos = np.asarray(videos)
  if videos.dtype == np.uint8:
    return videos
  if not np.issubdtype(videos.dtype, np.floating):
    raise ValueError(f"videos must be uint8 or float, got {videos.dtype}")
  lo, hi = value_range
  return np.clip(np.round((videos - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def jsonable(x: Any) -> Any:
  """`x` with numpy scalars as Python numbers, tuples as lists, dict keys as str and
  non-finite floats as None: what json.dump writes as standard JSON."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def check_videos(videos, name: str) -> np.ndarray:
  """`videos` as uint8 [N, T, H, W, 3] (see `to_uint8`); raises ValueError for another shape."""
  videos = to_uint8(videos)
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"{name} must be [N, T, H, W, 3], got shape {videos.shape}")
  return videos


def real_at_geometry(videos: np.ndarray, source_fps: float, stage_config) -> np.ndarray:
  """Stored real clips uint8 [N, T0, H0, W0, 3] at `source_fps` -> the stage's first
  frames/fps/size (frame stride round(source_fps / fps), then a bilinear resize)."""
  stride = max(1, int(round(float(source_fps) / float(stage_config.fps))))
  c = stage_config
  return resize_like(np.asarray(videos)[:, ::stride], (c.frames, c.height, c.width))


def resize_like(videos: np.ndarray, thw: tuple) -> np.ndarray:
  """uint8 real clips [N, T0, H0, W0, 3] at the stage's fps -> its first T frames at its size."""
  t, h, w = thw
  v = np.asarray(videos)
  if v.shape[1] < t:
    raise ValueError(f"Real clips have {v.shape[1]} frames at the stage's fps; need {t}.")
  v = v[:, :t]
  if v.shape[2:4] != (h, w):
    v = np.asarray(jax.image.resize(jnp.asarray(v, jnp.float32), v.shape[:2] + (h, w, v.shape[4]),
                                    "linear"))
    v = np.clip(np.round(v), 0, 255).astype(np.uint8)
  return v


def evaluate_videos(videos, targets: Optional[Sequence[Any]], real_videos=None,
                    extractor=None, *, fps: Optional[float] = None,
                    metrics: Sequence[str] = evaluators.DEFAULT_METRICS,
                    compute_fvd: bool = True, value_range: Tuple[float, float] = (-1.0, 1.0),
                    repeat_short: bool = True, out_path: Optional[str] = None
                    ) -> Dict[str, Any]:
  """Scores generated videos against what they were prompted with and against real clips.

  Args:
    videos: generated videos [N, T, H, W, 3], uint8 or float in `value_range`.
    targets: N prompts: ClipSpecs, captions or labels (see `moving_shapes.accuracy.as_target`);
      None when no chosen evaluator reads them.
    real_videos: real clips [M, T', H', W', 3] for FVD (and their consistency as a reference).
    extractor: an `fvd.I3DFeatureExtractor`; None = one with the packaged weights (if FVD is
      computed).
    fps: frame rate of `videos` (needed to read speeds); None = the fps of ClipSpec targets.
    metrics: names of `evaluators.REGISTRY` (see `evaluators.metrics_from_config`).
    compute_fvd: False drops "fvd" from `metrics` (skips loading I3D).
    value_range: range of float videos.
    repeat_short: stretch clips shorter than 9 frames in time for I3D.
    out_path: if given, the result is also written there as JSON (e.g. ".../eval.json").
  Returns:
    {"num_videos", "frames", "height", "width", "fps"} and the figures of every chosen
    evaluator: moving_shapes "caption_accuracy" {attribute: acc, "all"}, "consistency"
    {metric: mean}, "real_consistency" (with real videos); fvd "fvd" (+ details).
  """
  metrics = evaluators.check_metrics(metrics)
  chosen = [e for name, e in evaluators.REGISTRY.items()
            if name in metrics and (compute_fvd or name != "fvd")]
  needs = {n for e in chosen for n in e.needs}
  videos = check_videos(videos, "videos")
  if targets is not None and len(targets) != len(videos):
    raise ValueError(f"{len(videos)} videos but {len(targets)} targets: one prompt per video")
  if "targets" in needs and targets is None:
    raise ValueError(f"metrics {[e.name for e in chosen if 'targets' in e.needs]} need "
                     "targets: one prompt per video")
  if fps is None and targets is not None:
    spec_fps = {t.fps for t in targets if hasattr(t, "fps")}
    fps = spec_fps.pop() if len(spec_fps) == 1 else None
  if fps is None and "fps" in needs:
    raise ValueError("pass fps=: the videos' frame rate is needed to read speeds")
  n, t, h, w, _ = videos.shape
  if real_videos is not None:
    real_videos = check_videos(real_videos, "real_videos")
  inputs = evaluators.Inputs(videos=videos, targets=targets, fps=fps, real_videos=real_videos,
                             extractor=extractor, repeat_short=repeat_short)
  result = dict(num_videos=n, frames=t, height=h, width=w,
                fps=None if fps is None else float(fps))
  for e in chosen:
    if "real_videos" not in e.needs or real_videos is not None:
      result.update(e.compute(inputs))
  result = jsonable(result)
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
