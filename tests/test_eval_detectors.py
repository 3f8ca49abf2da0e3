"""Moving-shapes detectors and caption accuracy, on rendered clips and on pure noise."""
import math

import numpy as np
import pytest

from vdm_jax.data.moving_shapes import accuracy, detectors, grammar, motion, render, shape_fit

NUM_CLIPS = 30


def _render_set(seed, n, **geometry):
  rng = np.random.default_rng(seed)
  specs = [grammar.sample_spec(rng, **geometry) for _ in range(n)]
  return specs, [render.render(s) for s in specs]


@pytest.mark.parametrize("geometry", [dict(frames=8, height=16, width=16, fps=8.0),
                                      dict(frames=16, height=32, width=32, fps=8.0)],
                         ids=["16x16x8", "32x32x16"])
def test_detectors_read_rendered_clips(geometry):
  specs, videos = _render_set(7, NUM_CLIPS, **geometry)
  dets = [detectors.detect(v, geometry["fps"]) for v in videos]
  acc = accuracy.caption_accuracy(dets, specs)
  for attribute in accuracy.ATTRIBUTES:
    assert acc[attribute] >= 0.95, (attribute, acc)
  assert acc["all"] >= 0.9, acc
  assert acc["num_clips"] == NUM_CLIPS


def test_detectors_are_near_chance_on_noise():
  specs, _ = _render_set(8, NUM_CLIPS, frames=8, height=16, width=16, fps=8.0)
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (NUM_CLIPS, 8, 16, 16, 3), dtype=np.uint8)
  acc = accuracy.caption_accuracy([detectors.detect(v, 8.0) for v in noise], specs)
  assert acc["all"] <= 0.05, acc
  assert acc["shape"] <= 0.35 and acc["background"] <= 0.6 and acc["motion"] <= 0.4, acc


@pytest.mark.parametrize("background", grammar.BACKGROUND_NAMES)
def test_plain_background_has_no_objects(background):
  """A clip with nothing object-coloured (e.g. a sample that collapsed to the background) reads
  as its background and no objects, and scores every prompted object attribute wrong."""
  rgb = np.asarray(grammar.BACKGROUNDS[background], np.uint8)
  video = np.broadcast_to(rgb, (8, 16, 16, 3)).copy()
  det = detectors.detect(video, 8.0)
  assert det.background == background and det.objects == []
  assert det.coverage.shape == (8, 16, 16) and not det.coverage.any()
  spec, _ = _render_set(1, 1, frames=8, height=16, width=16, fps=8.0)
  score = accuracy.score_clip(det, spec[0])
  assert score["all"][0] == 0 and score["color"][0] == 0


@pytest.mark.parametrize("shape", grammar.SHAPES)
def test_every_shape_and_size_at_16x16(shape):
  for size in grammar.SIZE_NAMES:
    obj = grammar.ObjectSpec(shape=shape, color="green", size=size, motion="still",
                                speed=None, x0=0.47, y0=0.53)
    spec = grammar.ClipSpec(objects=(obj,), background="white", fps=8.0, frames=2,
                               height=16, width=16)
    det = detectors.detect(render.render(spec), 8.0)
    assert len(det.objects) == 1
    o = det.objects[0]
    assert (o.shape, o.size, o.color, o.motion, o.speed) == (shape, size, "green", "still",
                                                              None)
    _, ox, oy = shape_fit.unit_shape_stats(shape)  # coverage centroid vs the shape's centre
    r = grammar.SIZES[size]
    np.testing.assert_allclose(o.centers[0], [0.47 + r * ox, 0.53 + r * oy], atol=0.01)


def test_single_frame_has_no_motion():
  specs, videos = _render_set(3, 4, frames=1, height=32, width=32, fps=8.0, image=True)
  for spec, video in zip(specs, videos):
    det = detectors.detect(video, 8.0)
    assert all(o.motion is None and o.speed is None for o in det.objects)
    assert accuracy.score_clip(det, spec)["all"] == [1, 1]


def _track(vx, vy, frames=16, fps=8.0, x0=0.5, y0=0.5):
  t = np.arange(frames) / fps
  return np.stack([x0 + vx * t, y0 + vy * t], 1)


@pytest.mark.parametrize("name", [n for n in grammar.MOTIONS if n not in ("bouncing", "still")])
@pytest.mark.parametrize("speed", grammar.SPEED_NAMES)
def test_classify_motion_straight(name, speed):
  dx, dy = grammar.MOTIONS[name]
  v = grammar.SPEEDS[speed]
  got = motion.classify_motion(_track(v * dx, v * dy), 8.0, 32, 32)
  assert got[:2] == (name, speed)
  np.testing.assert_allclose(got[2], [v * dx, v * dy], atol=1e-9)


def test_classify_motion_still_bouncing_and_unseen():
  assert motion.classify_motion(_track(0.0, 0.0), 8.0, 32, 32)[:2] == ("still", None)
  track = _track(0.25 * math.cos(0.6), 0.25 * math.sin(0.6), x0=0.6)
  track[:, 0] = 0.85 - np.abs(track[:, 0] - 0.85)  # reflect off the right edge mid-clip
  assert motion.classify_motion(track, 8.0, 32, 32)[:2] == ("bouncing", "fast")
  oblique = _track(0.1 * math.cos(math.radians(30)), 0.1 * math.sin(math.radians(30)))
  assert motion.classify_motion(oblique, 8.0, 32, 32)[:2] == ("bouncing", "slow")
  unseen = np.full((8, 2), np.nan)
  unseen[3] = 0.5
  assert motion.classify_motion(unseen, 8.0, 32, 32)[0] is None


def test_targets_in_every_form_agree():
  specs, _ = _render_set(11, 6, frames=8, height=16, width=16, fps=8.0, num_objects=2)
  for spec in specs:
    want = accuracy.as_target(spec)
    assert accuracy.as_target(grammar.caption(spec)) == want
    assert accuracy.as_target(grammar.labels_to_dict(spec)) == want
  image_target = accuracy.as_target(grammar.labels_to_dict(specs[0]), with_motion=False)
  assert all(o["motion"] is None and o["speed"] is None for o in image_target["objects"])
  with pytest.raises(TypeError, match="cannot read attributes"):
    accuracy.as_target(3)


def test_score_clip_matches_objects_and_counts_errors():
  target = {"background": "gray", "objects": [
      dict(color="red", shape="circle", size="small", motion="left", speed="slow"),
      dict(color="blue", shape="star", size="large", motion="still", speed=None)]}
  swapped = {"background": "gray", "objects": [dict(target["objects"][1]),
                                               dict(target["objects"][0], shape="square")]}
  counts = accuracy.score_clip(swapped, target)
  assert counts["shape"] == [1, 2] and counts["speed"] == [2, 2] and counts["color"] == [2, 2]
  assert counts["all"] == [0, 1] and counts["num_objects"] == [1, 1]
  missing = {"background": "white", "objects": [dict(target["objects"][0])]}
  counts = accuracy.score_clip(missing, target)
  assert counts["color"] == [1, 2] and counts["background"] == [0, 1]
  assert counts["num_objects"] == [0, 1]
  image = "a small red circle on a gray background"  # no motion phrase: motion not scored
  counts = accuracy.score_clip({"background": "gray", "objects": [target["objects"][0]]}, image)
  assert counts["motion"] == [0, 0] and counts["all"] == [1, 1]
  acc = accuracy.caption_accuracy([swapped, missing], [target, target])
  assert acc["shape"] == pytest.approx(2 / 4) and acc["all"] == 0.0
  with pytest.raises(ValueError, match="2 predictions for 1 targets"):
    accuracy.caption_accuracy([swapped, missing], [target])
