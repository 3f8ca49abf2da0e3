"""Temporal consistency metrics: zero drift on rendered clips, growing with injected defects."""
import numpy as np
import pytest

from vdm_jax.data.moving_shapes import consistency, detectors, grammar, render


@pytest.fixture(scope="module")
def clip():
  obj = grammar.ObjectSpec(shape="square", color="red", size="large", motion="right",
                              speed="fast", x0=0.3, y0=0.5, vx=0.25, vy=0.0)
  spec = grammar.ClipSpec(objects=(obj,), background="gray", fps=8.0, frames=8, height=32,
                             width=32)
  return render.render(spec)  # [8, 32, 32, 3] uint8


def _metrics(video):
  return consistency.clip_consistency(video, detectors.detect(video, 8.0))


def test_rendered_clip_is_consistent(clip):
  m = _metrics(clip)
  assert m["flicker"] == 0.0
  assert m["color_std"] < 0.5 and m["area_cv"] < 0.01 and m["shape_agreement"] == 1.0
  assert m["frame_diff"] > 0.0  # the object moves


def test_flicker_colour_and_area_drift_are_measured(clip):
  clean = _metrics(clip)
  flicker = clip.astype(np.int32) + np.array([0, 12, 0, 12, 0, 12, 0, 12])[:, None, None, None]
  assert _metrics(np.clip(flicker, 0, 255).astype(np.uint8))["flicker"] == pytest.approx(12.0)
  # The object's colour fades towards magenta over the clip (red and magenta share the red
  # channel): its mean colour drifts.
  obj = np.all(clip == grammar.COLORS["red"], axis=-1)                   # [T, H, W]
  drift = clip.astype(np.float32)
  drift[..., 2] += np.where(obj, np.linspace(0, 60, 8)[:, None, None], 0)
  assert _metrics(drift.astype(np.uint8))["color_std"] > clean["color_std"] + 10
  # The object shrinks in the second half: its area varies.
  shrink = clip.copy()
  shrink[4:, :, :] = grammar.BACKGROUNDS["gray"]
  shrink[4:, 12:18, 12:18] = grammar.COLORS["red"]
  assert _metrics(shrink)["area_cv"] > 0.2


def test_tracks_of_even_motion_are_smooth_and_jitter_is_measured(clip):
  """The rendered object moves 0.25 of the width per second at 8 fps: 1 px per frame, in a
  straight line (jerk 0); shifting every other frame by 2 px makes a zig-zag track."""
  m = _metrics(clip)
  assert m["track_speed"] == pytest.approx(1.0, abs=0.05)
  assert m["track_jerk"] < 0.05
  jitter = clip.copy()
  jitter[1::2] = np.roll(clip[1::2], 2, axis=1)                          # 2 px down
  j = _metrics(jitter)
  assert j["track_jerk"] > 3.0 and j["track_speed"] > m["track_speed"]


def test_summarize_skips_missing_values():
  nan = float("nan")
  out = consistency.summarize([dict(color_std=1.0, area_cv=nan, shape_agreement=1.0,
                                    flicker=2.0, frame_diff=3.0, track_speed=1.0,
                                    track_jerk=nan),
                               dict(color_std=3.0, area_cv=0.5, shape_agreement=0.5,
                                    flicker=nan, frame_diff=1.0, track_speed=2.0,
                                    track_jerk=0.5)])
  assert out == dict(color_std=2.0, area_cv=0.5, shape_agreement=0.75, flicker=2.0,
                     frame_diff=2.0, track_speed=1.5, track_jerk=0.5)
