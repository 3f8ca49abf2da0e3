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


def test_summarize_skips_missing_values():
  out = consistency.summarize([dict(color_std=1.0, area_cv=float("nan"), shape_agreement=1.0,
                                    flicker=2.0, frame_diff=3.0),
                               dict(color_std=3.0, area_cv=0.5, shape_agreement=0.5,
                                    flicker=float("nan"), frame_diff=1.0)])
  assert out == dict(color_std=2.0, area_cv=0.5, shape_agreement=0.75, flicker=2.0,
                     frame_diff=2.0)
