"""Detectors that read a moving-shapes clip from its pixels alone.

`detect(video, fps)` recovers what the caption says (`grammar.caption`): the background, the
objects (at most `grammar.MAX_OBJECTS`) and, for each, colour, shape, size, motion and speed.
It knows the domain's vocabulary and drawing model (colours, unit shapes, sizes, coverage
anti-aliasing: a pixel is `alpha * colour + (1 - alpha) * background`) but nothing of the clip:

  1. background: the per-frame median colour (objects cover < 1/3 of a frame), named by the
     nearest `BACKGROUNDS` colour;
  2. per vocabulary colour c, every pixel's alpha = its projection on the segment from the
     background to c, and the residual off that segment; a pixel is a "member" of the colour
     that explains it best (smallest residual) if its alpha for that colour > MIN_ALPHA_MEMBER.
     Colours whose members carry enough coverage over the clip are the objects (vocabulary
     colours are distinct within a clip);
  3. each object's coverage map per frame: alpha of its colour near its member pixels; its
     coverage centroid and area per frame;
  4. shape and size by analysis by synthesis (`shape_fit`);
  5. motion and speed from the centroid track (`motion.classify_motion`), leaving out frames
     where the object touches another one (occlusion moves its centroid).
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from vdm_jax.data.moving_shapes import grammar
from vdm_jax.data.moving_shapes import motion as motion_lib
from vdm_jax.data.moving_shapes import shape_fit

MIN_ALPHA_MEMBER = 0.25      # a pixel this covered can vote for a colour
MIN_ALPHA_CONFIDENT = 0.5    # pixels this covered give an object's mean colour
MAX_RESIDUAL = 40.0          # RGB units off the background->colour segment
MIN_COLOUR_FRACTION = 0.4    # of the smallest object's area, per frame, for a colour to count
MIN_COVERAGE = 0.02          # alpha below this is not part of an object
TOUCH_ALPHA = 0.1            # coverage that counts when deciding whether two objects touch
MIN_CLEAN_FRAMES = 3         # untouched frames needed to leave the touching ones out

_COLOUR_RGB = np.stack([grammar.COLORS[n] for n in grammar.COLOR_NAMES]).astype(np.float32)
_BG_RGB = np.stack([grammar.BACKGROUNDS[n] for n in grammar.BACKGROUND_NAMES]
                   ).astype(np.float32)


@dataclasses.dataclass
class DetectedObject:
  """One object read from a clip. Track arrays are [T, ...]; NaN where the object was not seen."""
  color: str
  shape: Optional[str]
  size: Optional[str]
  motion: Optional[str]            # None for a single frame
  speed: Optional[str]             # None for "still" and single frames
  centers: np.ndarray              # [T, 2] coverage centroid (x, y), frame fractions
  areas: np.ndarray                # [T] coverage area, pixels
  mean_colors: np.ndarray          # [T, 3] mean RGB of its pixels with alpha > 0.5
  frame_shapes: np.ndarray         # [T] best shape per fitted frame ("" elsewhere)
  velocity: np.ndarray             # [2] frame fractions / s (least squares)

  def attributes(self) -> Dict[str, Optional[str]]:
    return dict(shape=self.shape, color=self.color, size=self.size, motion=self.motion,
                speed=self.speed)


@dataclasses.dataclass
class Detection:
  """Everything read from one clip."""
  background: str
  background_rgb: np.ndarray       # [T, 3] per-frame median colour
  objects: List[DetectedObject]
  coverage: np.ndarray             # [T, H, W] summed object coverage (0 = background)

  def attributes(self) -> dict:
    """{"background": str, "objects": [attribute dicts]}, the form `parse_caption` returns."""
    return dict(background=self.background, objects=[o.attributes() for o in self.objects])


def _colour_alphas(video: np.ndarray, bg: np.ndarray):
  """Per-colour alpha and residual: [K, T, H, W] each, K = len(COLOR_NAMES)."""
  d = video - bg[:, None, None, :]                                          # [T, H, W, 3]
  e = _COLOUR_RGB[:, None, :] - bg[None, :, :]                              # [K, T, 3]
  e_norm2 = np.maximum((e ** 2).sum(-1), 1.0)                               # [K, T]
  alpha = np.einsum("thwc,ktc->kthw", d, e) / e_norm2[:, :, None, None]
  alpha = np.clip(alpha, 0.0, 1.0)
  resid = d[None] - alpha[..., None] * e[:, :, None, None, :]
  return alpha, np.sqrt((resid ** 2).sum(-1))


def _smallest_area_px(height: int, width: int) -> float:
  r = min(grammar.SIZES.values()) * min(height, width)
  return min(shape_fit.unit_shape_stats(s)[0] for s in grammar.SHAPES) * r * r


def _segment(alpha, resid, member, colours: List[int], height: int, width: int):
  """Coverage maps [N, T, H, W] of the objects with the given colour indices.

  A pixel belongs to the object (within reach of that object's member pixels in the frame)
  whose background->colour segment explains it best (smallest residual).
  """
  t_count = alpha.shape[1]
  if not colours:                       # nothing object-coloured: every pixel is background
    return np.zeros((0, t_count, height, width), np.float64)
  yy, xx = np.mgrid[0:height, 0:width]
  px, py = xx + 0.5, yy + 0.5
  reach = shape_fit.window_half(height, width)
  score = np.full((len(colours), t_count, height, width), np.inf)
  for n, k in enumerate(colours):
    for t in range(t_count):
      conf = member[t] == k
      if not conf.any():
        continue
      near = np.hypot(px - px[conf].mean(), py - py[conf].mean()) <= reach
      score[n, t] = np.where(near & (resid[k, t] < MAX_RESIDUAL), resid[k, t], np.inf)
  owner = np.argmin(score, axis=0)                                          # [T, H, W]
  maps = np.zeros((len(colours), t_count, height, width), np.float64)
  for n, k in enumerate(colours):
    own = (owner == n) & np.isfinite(score[n]) & (alpha[k] >= MIN_COVERAGE)
    maps[n] = np.where(own, alpha[k], 0.0)
  return maps


def _touching(maps: np.ndarray) -> np.ndarray:
  """[N, T] True where an object's coverage meets another's (same or 4-adjacent pixels).

  Only pixels covered at least TOUCH_ALPHA count, so objects separated by faint anti-aliased
  edges are not touching; overlapping (occluding) ones are.
  """
  present = maps >= TOUCH_ALPHA                                             # [N, T, H, W]
  h, w = present.shape[2:]
  padded = np.pad(present, ((0, 0), (0, 0), (1, 1), (1, 1)))
  grown = present.copy()
  for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    grown |= padded[:, :, dy:dy + h, dx:dx + w]
  out = np.zeros(maps.shape[:2], bool)
  for n in range(maps.shape[0]):
    others = present[np.arange(maps.shape[0]) != n].any(0)                 # [T, H, W]
    out[n] = (grown[n] & others).any(axis=(1, 2))
  return out


def detect(video, fps: float) -> Detection:
  """Reads a moving-shapes clip: video uint8 [T, H, W, 3] (or float in [0, 255]) at `fps`."""
  video = np.asarray(video)
  if video.ndim == 3:
    video = video[None]
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"detect expects a clip [T, H, W, 3], got shape {video.shape}")
  video = video.astype(np.float32)
  t_count, height, width, _ = video.shape
  bg = np.median(video.reshape(t_count, -1, 3), axis=1)                    # [T, 3]
  bg_name = grammar.BACKGROUND_NAMES[
      int(np.argmin(((_BG_RGB - np.median(bg, 0)) ** 2).sum(-1)))]
  alpha, resid = _colour_alphas(video, bg)
  # Each pixel's best colour (smallest residual); a member of it if covered enough.
  candidate = (alpha > MIN_COVERAGE) & (resid < MAX_RESIDUAL)              # [K, T, H, W]
  best = np.argmin(np.where(candidate, resid, np.inf), axis=0)              # [T, H, W]
  best_alpha = np.take_along_axis(alpha, best[None], axis=0)[0]
  member = np.where(candidate.any(0) & (best_alpha > MIN_ALPHA_MEMBER), best, -1)
  mass = np.array([alpha[k][member == k].sum() for k in range(len(_COLOUR_RGB))])
  need = MIN_COLOUR_FRACTION * _smallest_area_px(height, width) * t_count
  order = [int(k) for k in np.argsort(-mass, kind="stable") if mass[k] >= need]
  colours = order[:grammar.MAX_OBJECTS]
  maps = _segment(alpha, resid, member, colours, height, width)
  touching = _touching(maps)
  pad = shape_fit.window_half(height, width)
  yy, xx = np.mgrid[0:height, 0:width]
  objects = []
  for n, k in enumerate(colours):
    a = maps[n]                                                             # [T, H, W]
    areas = a.sum(axis=(1, 2))
    seen = areas > 0.25 * _smallest_area_px(height, width)
    clean = seen & ~touching[n]      # frames whose centroid is not disturbed by a neighbour
    seen_for_fit = clean if clean.sum() >= min(MIN_CLEAN_FRAMES, t_count) else seen
    with np.errstate(invalid="ignore", divide="ignore"):
      cx = (a * (xx + 0.5)).sum(axis=(1, 2)) / areas
      cy = (a * (yy + 0.5)).sum(axis=(1, 2)) / areas
    centroid_px = np.where(seen[:, None], np.stack([cx, cy], 1), np.nan)
    own = (member == k) & (alpha[k] > MIN_ALPHA_CONFIDENT)
    mean_colors = np.stack([video[t][own[t]].mean(0) if own[t].any() else np.full(3, np.nan)
                            for t in range(t_count)])
    fit = shape_fit.fit_shape(np.pad(a, ((0, 0), (pad, pad), (pad, pad))),
                              np.nan_to_num(centroid_px), seen_for_fit, height, width)
    centers = centroid_px / np.array([width, height])
    if t_count > 1:
      track = np.where(seen_for_fit[:, None], centers, np.nan)
      motion, speed, velocity = motion_lib.classify_motion(track, fps, height, width)
    else:
      motion, speed, velocity = None, None, np.zeros(2)
    objects.append(DetectedObject(
        color=grammar.COLOR_NAMES[k], shape=fit["shape"], size=fit["size"], motion=motion,
        speed=speed, centers=centers, areas=areas, mean_colors=mean_colors,
        frame_shapes=fit["frame_shapes"], velocity=velocity))
  # Objects come in decreasing coverage mass (a caption's order is not visible in pixels).
  return Detection(background=bg_name, background_rgb=bg, objects=objects,
                   coverage=maps.sum(0) if colours else np.zeros((t_count, height, width)))


def detect_batch(videos, fps: float) -> List[Detection]:
  """`detect` for every clip of [N, T, H, W, 3]."""
  return [detect(v, fps) for v in videos]
