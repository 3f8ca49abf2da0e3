"""Motion and speed of a moving-shapes object from its centroid track.

The renderer (`render`, see `grammar`) moves an object with constant velocity in frame
fractions per second: along one of eight compass directions ("left", ..., "down-right"), not at
all ("still"), or "bouncing": along a direction 25-65 degrees off the axes, reflected at the
frame edges (each coordinate a triangle wave). From a track we decide, in this order:
  1. "bouncing" if some axis is better explained by a reflection (x = a + b |t - t0|) than by a
     line, by more than the noise allows;
  2. "still" if the least-squares speed is below STILL_SPEED;
  3. the nearest compass direction, unless the direction is off every compass direction by
     more than its measurement error allows -> "bouncing" (an oblique bounce that meets no wall
     during the clip);
and the speed class from the speed (per-axis median step speed for bouncing tracks).
"""
import math
from typing import Optional, Tuple

import numpy as np

from vdm_jax.data.moving_shapes import grammar

SLOW, FAST = min(grammar.SPEEDS.values()), max(grammar.SPEEDS.values())
STILL_SPEED = 0.5 * SLOW                    # frame fractions / s
FAST_SPEED = math.sqrt(SLOW * FAST)         # slow | fast boundary (geometric mean)
COMPASS = {name: math.degrees(math.atan2(d[1], d[0]))
           for name, d in grammar.MOTIONS.items() if d is not None and d != (0.0, 0.0)}
MIN_BOUNCE_AXIS_SPEED = 0.5 * SLOW * math.sin(math.radians(25.0))  # per axis, frame fractions/s
NOISE_FLOOR_PX = 0.03       # centroid error of an exact anti-aliased render, pixels
MIN_ANGLE_TOLERANCE = 1.0   # degrees
REFLECTION_GAIN = 25.0      # how many noise variances a reflection must explain
ANGLE_SIGMAS = 2.0         # a compass direction is kept within this many standard errors


def _line_sse(t: np.ndarray, x: np.ndarray) -> float:
  design = np.stack([np.ones_like(t), t], 1)
  coef, *_ = np.linalg.lstsq(design, x, rcond=None)
  return float(((design @ coef - x) ** 2).sum())


def _fold_fit(t: np.ndarray, x: np.ndarray) -> Tuple[float, float]:
  """Best single-reflection fit x = a + b |t - t0| over t0 inside the track: (sse, b)."""
  t0 = np.linspace(t[0], t[-1], 16 * len(t) + 1)[1:-1]                     # [K]
  basis = np.abs(t[None, :] - t0[:, None])                                  # [K, F]
  bm = basis - basis.mean(1, keepdims=True)
  xm = x - x.mean()
  denom = np.maximum((bm ** 2).sum(1), 1e-12)
  b = (bm * xm[None]).sum(1) / denom                                        # [K]
  sse = ((xm[None] - b[:, None] * bm) ** 2).sum(1)
  k = int(np.argmin(sse))
  return float(sse[k]), float(b[k])


def has_reflection(t: np.ndarray, x_px: np.ndarray, min_speed_px: float) -> bool:
  """Is the 1D track x_px(t) (pixels) a reflection (V or inverted V) rather than a line?"""
  if len(t) < 4:
    return False
  sse_line = _line_sse(t, x_px)
  sse_fold, b = _fold_fit(t, x_px)
  var = max(sse_fold / (len(t) - 3), NOISE_FLOOR_PX ** 2)
  return abs(b) >= min_speed_px and sse_line - sse_fold > REFLECTION_GAIN * var


def speed_class(speed: float) -> str:
  return "fast" if speed >= FAST_SPEED else "slow"


def classify_motion(centers: np.ndarray, fps: float, height: int, width: int
                    ) -> Tuple[Optional[str], Optional[str], np.ndarray]:
  """(motion, speed, velocity) of a centroid track.

  Args:
    centers: [T, 2] (x, y) in frame fractions; NaN rows (object unseen) are skipped.
    fps: frames per second of the clip.
    height, width: frame size in pixels (sets the pixel noise scale).
  Returns:
    motion name (None with < 2 usable frames), speed name (None for still), velocity [2] in
    frame fractions per second (least squares).
  """
  ok = np.all(np.isfinite(centers), axis=1)
  if ok.sum() < 2:
    return None, None, np.zeros(2)
  t = np.flatnonzero(ok) / fps
  p = centers[ok]
  scale = np.array([width, height], np.float64)
  p_px = p * scale                                                          # [F, 2]
  design = np.stack([np.ones_like(t), t - t.mean()], 1)
  coef, *_ = np.linalg.lstsq(design, p_px, rcond=None)
  v = coef[1] / scale                                                       # fractions / s
  if any(has_reflection(t, p_px[:, a], MIN_BOUNCE_AXIS_SPEED * scale[a]) for a in (0, 1)):
    steps = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]                # [F-1, 2]
    return "bouncing", speed_class(float(np.linalg.norm(np.median(steps, 0)))), v
  speed = float(np.linalg.norm(v))
  if speed < STILL_SPEED:
    return "still", None, v
  angle = math.degrees(math.atan2(v[1], v[0]))  # compass directions live in frame fractions
  name, dev = min(((n, abs((angle - a + 180.0) % 360.0 - 180.0)) for n, a in COMPASS.items()),
                  key=lambda item: item[1])
  resid = p_px - design @ coef
  sigma = max(math.sqrt(float((resid ** 2).sum()) / max(2 * (len(t) - 2), 1)), NOISE_FLOOR_PX)
  spread = math.sqrt(float(((t - t.mean()) ** 2).sum()))
  angle_se = math.degrees(sigma / max(spread * float(np.linalg.norm(coef[1])), 1e-9))
  if dev > max(MIN_ANGLE_TOLERANCE, ANGLE_SIGMAS * angle_se):
    return "bouncing", speed_class(speed), v
  return name, speed_class(speed), v
