"""Temporal consistency of moving-shapes videos, read through the detectors.

A real clip keeps each object's colour, area and shape fixed and its background still; a
generated one may drift or flicker. Per clip (`clip_consistency`):
  color_std         mean over objects of the RMS (over RGB) of the std over frames of the
                    object's mean colour (confident pixels), RGB units [0, 255];
  area_cv           mean over objects of std / mean of the per-frame coverage area;
  shape_agreement   mean over objects of the fraction of fitted frames whose own best shape
                    is the clip's shape (1 = stable);
  flicker           mean |frame t+1 - frame t| over pixels that are background (no object
                    coverage) in both frames, RGB units;
  frame_diff        mean |frame t+1 - frame t| over all pixels (motion included), RGB units;
  track_speed       mean over objects of |c(t+1) - c(t)|, the centroid's step, pixels / frame;
  track_jerk        mean over objects of |c(t+1) - 2 c(t) + c(t-1)|, pixels / frame^2: how far
                    a track is from straight, even motion (a real clip's objects move at
                    constant velocity and bounce off the frame's edges; a generated one may
                    jitter). Compare with the same figure of real clips (`real_consistency`).
Objects and frames where nothing was detected are left out; a value with nothing to average is
NaN, and `summarize` averages the finite ones.
"""
from typing import Dict, Sequence

import numpy as np

from vdm_jax.data.moving_shapes import detectors

METRICS = ("color_std", "area_cv", "shape_agreement", "flicker", "frame_diff", "track_speed",
           "track_jerk")


def _nanmean(values) -> float:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else float("nan")


def clip_consistency(video, detection: detectors.Detection) -> Dict[str, float]:
  """The METRICS of one clip (uint8 [T, H, W, 3]) given its detection."""
  video = np.asarray(video, np.float32)
  color_std, area_cv, shape_agree = [], [], []
  for o in detection.objects:
    cols = o.mean_colors[np.all(np.isfinite(o.mean_colors), axis=1)]
    if len(cols) >= 2:
      color_std.append(float(np.sqrt(np.mean(cols.std(axis=0) ** 2))))
    areas = o.areas[o.areas > 0]
    if len(areas) >= 2:
      area_cv.append(float(areas.std() / areas.mean()))
    fitted = o.frame_shapes[o.frame_shapes != ""]
    if len(fitted) >= 1 and o.shape is not None:
      shape_agree.append(float(np.mean(fitted == o.shape)))
  out = dict(color_std=_nanmean(color_std), area_cv=_nanmean(area_cv),
             shape_agreement=_nanmean(shape_agree))
  speeds, jerks = [], []
  scale = np.array([video.shape[2], video.shape[1]], np.float64)        # (x, y) fractions -> px
  for o in detection.objects:
    c = np.asarray(o.centers, np.float64) * scale                        # [T, 2], NaN unseen
    step = np.linalg.norm(np.diff(c, axis=0), axis=-1)                   # [T-1]
    jerk = np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=-1)         # [T-2]
    speeds.append(_nanmean(step))
    jerks.append(_nanmean(jerk))
  out["track_speed"], out["track_jerk"] = _nanmean(speeds), _nanmean(jerks)
  if video.shape[0] >= 2:
    diff = np.abs(np.diff(video, axis=0)).mean(-1)                          # [T-1, H, W]
    empty = detection.coverage < detectors.MIN_COVERAGE                     # [T, H, W]
    still_bg = empty[1:] & empty[:-1]
    out["flicker"] = float(diff[still_bg].mean()) if still_bg.any() else float("nan")
    out["frame_diff"] = float(diff.mean())
  else:
    out["flicker"] = out["frame_diff"] = float("nan")
  return out


def summarize(per_clip: Sequence[Dict[str, float]]) -> Dict[str, float]:
  """Mean of every metric over clips (finite values only)."""
  return {m: _nanmean([c[m] for c in per_clip]) for m in METRICS}
