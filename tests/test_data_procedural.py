"""The procedural moving-shapes domain: sampling, captions, labels and the renderer."""
import numpy as np
import pytest

from vdm_jax.data.moving_shapes import grammar as P
from vdm_jax.data.moving_shapes import render as R


def _one(shape="square", color="red", size="large", motion="still", speed=None, x0=0.5, y0=0.5,
         background="black", fps=8.0, frames=1, res=32, vx=0.0, vy=0.0):
  o = P.ObjectSpec(shape=shape, color=color, size=size, motion=motion, speed=speed, x0=x0,
                   y0=y0, vx=vx, vy=vy)
  return P.ClipSpec(objects=(o,), background=background, fps=fps, frames=frames, height=res,
                    width=res)


def _mask(frame, color):
  return np.all(frame == P.COLORS[color], axis=-1)


def test_vocabulary_is_rich_and_separated():
  assert len(P.COLORS) >= 6 and {"circle", "square", "triangle"} <= set(P.SHAPES)
  assert len(P.SHAPES) >= 6 and len(P.MOTIONS) == 10 and len(P.SIZES) == 3
  colors = np.stack([c.astype(float) for c in
                     list(P.COLORS.values()) + list(P.BACKGROUNDS.values())])
  dist = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
  np.fill_diagonal(dist, np.inf)
  assert dist.min() > 100


@pytest.mark.parametrize("color,background", [("red", "black"), ("cyan", "white"),
                                              ("yellow", "gray")])
def test_object_pixels_have_the_labelled_colour(color, background):
  frame = R.render(_one(color=color, background=background))[0]
  assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
  np.testing.assert_array_equal(frame[16, 16], P.COLORS[color])      # inside
  np.testing.assert_array_equal(frame[1, 1], P.BACKGROUNDS[background])  # outside
  # Large square: half-extent 0.2 * 32 = 6.4 px around the centre (16, 16) -> 12 full pixels.
  assert _mask(frame, color).sum() == 12 * 12


def test_shapes_are_distinct_and_antialiased():
  masks = {}
  for shape in P.SHAPES:
    frame = R.render(_one(shape=shape, res=48))[0].astype(int)
    masks[shape] = frame[..., 0] > 0
    values = np.unique(frame[..., 0])
    assert len(values) > 2, f"{shape}: edges should be partially covered (anti-aliased)"
  names = list(masks)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert (masks[a] != masks[b]).sum() > 5, (a, b)
  # Circle area ~ pi r^2 with r = 0.2 * 48.
  assert abs(masks["circle"].sum() - np.pi * 9.6 ** 2) < 0.1 * np.pi * 9.6 ** 2


def _centroids(video, color):
  out = []
  for frame in video:
    ys, xs = np.nonzero(_mask(frame, color))
    out.append((xs.mean(), ys.mean()))
  return np.array(out)


@pytest.mark.parametrize("motion", ["left", "right", "up", "down", "up-left", "down-right"])
@pytest.mark.parametrize("color", ["green", "magenta"])
def test_centroid_moves_in_the_labelled_direction(motion, color):
  rng = np.random.default_rng(1)
  ux, uy = P.MOTIONS[motion]
  vx, vy = np.array([ux, uy]) * P.SPEEDS["fast"]
  # Start so that the 2-second path is centred in the frame.
  spec = _one(shape="square", color=color, size="medium", motion=motion, speed="fast",
              x0=0.5 - vx, y0=0.5 - vy, vx=vx, vy=vy, frames=9, fps=4.0, res=48)
  c = _centroids(R.render(spec), color)
  expected = np.array([vx, vy]) * 2.0 * 48  # pixels over 2 seconds
  np.testing.assert_allclose(c[-1] - c[0], expected, atol=1.0)
  steps = np.diff(c, axis=0)
  assert np.all(steps @ np.array([ux, uy]) > 0)  # every frame moves the labelled way
  # The same through sample_spec: the labelled velocity points along the labelled motion.
  for _ in range(20):
    s = P.sample_spec(rng, frames=9, height=48, width=48, fps=4.0, num_objects=1)
    o = s.objects[0]
    if o.motion in ("still", "bouncing"):
      continue
    c = _centroids(R.render(s), o.color)
    d = (c[-1] - c[0]) / 48
    mx, my = P.MOTIONS[o.motion]
    np.testing.assert_allclose(d, np.array([mx, my]) * P.SPEEDS[o.speed] * 2.0, atol=1.5 / 48)


def test_twice_the_fps_samples_the_same_motion():
  rng = np.random.default_rng(7)
  for _ in range(5):
    spec = P.sample_spec(rng, frames=6, height=32, width=32, fps=4.0)
    fast = P.ClipSpec(objects=spec.objects, background=spec.background, fps=8.0, frames=11,
                      height=32, width=32)
    a, b = R.render(spec).astype(int), R.render(fast).astype(int)[::2]
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 255 // 16 + 1  # at most one sub-sample flips
    assert np.abs(a - b).mean() < 0.05


def test_objects_stay_in_frame_and_bounce():
  rng = np.random.default_rng(3)
  for _ in range(60):
    spec = P.sample_spec(rng, frames=16, height=32, width=32, fps=8.0)
    times = np.linspace(0, (spec.frames - 1) / spec.fps, 64)
    centers = P.object_centers(spec, times)
    for n, o in enumerate(spec.objects):
      rx, ry = P.half_extents(o.size, 32, 32)
      assert np.all(centers[:, n, 0] >= rx - 1e-9) and np.all(centers[:, n, 0] <= 1 - rx + 1e-9)
      assert np.all(centers[:, n, 1] >= ry - 1e-9) and np.all(centers[:, n, 1] <= 1 - ry + 1e-9)
  bouncer = _one(motion="bouncing", speed="fast", x0=0.7, y0=0.5, vx=0.25, frames=33, fps=8.0)
  # Unfolded x = 0.7 + 0.25 t reaches 1 - r = 0.8 at t = 0.4 s and reflects; the left wall
  # r = 0.2 is reached at t = 0.4 + 0.6 / 0.25 = 2.8 s.
  x = P.object_centers(bouncer, [0.0, 0.4, 0.6, 2.8, 3.0])[:, 0, 0]
  np.testing.assert_allclose(x, [0.7, 0.8, 0.75, 0.2, 0.25], atol=1e-9)
  x = P.object_centers(bouncer)[:, 0, 0]
  assert np.any(np.diff(x) > 0) and np.any(np.diff(x) < 0)


def test_sampling_is_deterministic_and_respects_held_out():
  kw = dict(frames=8, height=32, width=32, fps=8.0)
  a = [P.sample_spec(np.random.default_rng(5), **kw) for _ in range(2)]
  assert a[0] == a[1]
  assert P.sample_spec(np.random.default_rng(6), **kw) != a[0]
  held = [("red", "triangle"), ("blue", "left")]
  rng = np.random.default_rng(0)
  for _ in range(300):
    spec = P.sample_spec(rng, held_out=held, **kw)
    assert not P.is_held_out(spec, held)
    for o in spec.objects:
      assert not (o.color == "red" and o.shape == "triangle")
  for _ in range(20):
    spec = P.sample_spec(rng, held_out=held, include_held_out=True, **kw)
    assert P.is_held_out(spec, held)
  with pytest.raises(ValueError, match="held-out combo"):
    P.sample_spec(rng, held_out=[("red", "purple")], **kw)
  with pytest.raises(ValueError, match="too long"):
    P.validate_geometry(frames=64, fps=4.0, height=32, width=32)


def test_vocabulary_restricts_the_words_clips_use():
  vocab = {"speed": ("fast",), "size": ("large", "medium"), "motion": ("left", "still")}
  full = P.check_vocabulary(vocab)
  assert full["size"] == ("medium", "large")          # vocabulary order
  assert full["shape"] == tuple(P.SHAPES)             # unrestricted kinds keep every word
  rng = np.random.default_rng(3)
  seen = set()
  for _ in range(200):
    spec = P.sample_spec(rng, frames=8, height=32, width=32, fps=8.0, vocabulary=vocab)
    for o in spec.objects:
      assert o.motion in ("left", "still") and o.size in ("medium", "large")
      assert o.speed == (None if o.motion == "still" else "fast")
      seen.add(o.motion)
  assert seen == {"left", "still"}
  # a held-out combo still fixes its own words
  spec = P.sample_spec(rng, frames=8, height=32, width=32, fps=8.0, vocabulary=vocab,
                       held_out=[("blue", "left")], include_held_out=True)
  assert (spec.objects[0].color, spec.objects[0].motion) == ("blue", "left")
  with pytest.raises(ValueError, match="not motion words"):
    P.check_vocabulary({"motion": ("fast",)})
  with pytest.raises(ValueError, match="Unknown vocabulary kind"):
    P.check_vocabulary({"colour": ("red",)})
  with pytest.raises(ValueError, match="two colours"):
    P.sample_spec(rng, frames=8, height=32, width=32, fps=8.0, num_objects=2,
                  vocabulary={"color": ("red",)})


def test_captions_parse_back_to_the_labels():
  rng = np.random.default_rng(11)
  seen_two = seen_image = False
  for i in range(200):
    spec = P.sample_spec(rng, frames=8, height=32, width=32, fps=8.0, image=i % 4 == 0)
    text = P.caption(spec)
    parsed = P.parse_caption(text)
    labels = P.labels_to_dict(spec)
    assert parsed["background"] == P.BACKGROUND_NAMES[labels["background"]]
    assert len(parsed["objects"]) == labels["num_objects"]
    for n, obj in enumerate(parsed["objects"]):
      assert obj["shape"] == P.SHAPES[labels[f"obj{n}_shape"]]
      assert obj["color"] == P.COLOR_NAMES[labels[f"obj{n}_color"]]
      assert obj["size"] == P.SIZE_NAMES[labels[f"obj{n}_size"]]
      if spec.is_image:
        assert obj["motion"] is None and "moving" not in text and "still" not in text
      else:
        assert obj["motion"] == P.MOTION_NAMES[labels[f"obj{n}_motion"]]
        speed = labels[f"obj{n}_speed"]
        assert obj["speed"] == (P.SPEED_NAMES[speed] if speed >= 0 else None)
    seen_two |= labels["num_objects"] == 2
    seen_image |= spec.is_image
    back = P.labels_from_dict(labels, fps=spec.fps, frames=spec.frames, height=32, width=32)
    assert P.caption(back) == text
    assert np.abs(R.render(back).astype(int) - R.render(spec).astype(int)).max() <= 16
  assert seen_two and seen_image
  assert P.caption(_one(motion="left", speed="slow", size="small", color="red",
                        shape="circle", frames=2)) == \
      "a small red circle moving left slowly on a black background"
  with pytest.raises(ValueError, match="grammar"):
    P.parse_caption("a purple elephant dancing")
