"""tfds builders: moving_shapes (+ images) determinism, labels, held-out splits; video_folder."""
import json
import os
import sys
import types

import imageio
import imageio.v3 as iio
import numpy as np
from PIL import Image
import pytest

from configs import default
from vdm_jax.data import build
from vdm_jax.data import video_folder as VF
from vdm_jax.data import video_io
from vdm_jax.data.moving_shapes import builder as MS
from vdm_jax.data.moving_shapes import grammar as P
from vdm_jax.data.moving_shapes import render as R
from vdm_jax.eval import evaluate
from vdm_jax.eval import evaluators

HELD = ("red triangle", "blue left")
# imageio runs ffmpeg in a subprocess (fork + exec at once), which the JAX fork warning flags.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _build(data_dir, seed, cls=MS.MovingShapes):
  cfg = MS.make_config(frames=6, height=16, width=16, fps=8.0, num_train=24, num_test=10,
                       seed=seed, held_out=HELD)
  builder = cls(config=cfg, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
  root = tmp_path_factory.mktemp("ms")
  return {"a": _build(root / "a", 0), "b": _build(root / "b", 0), "c": _build(root / "c", 1),
          "img": _build(root / "a", 0, MS.MovingShapesImages)}


def _records(builder, split):
  source = builder.as_data_source()[split]
  return [source[i] for i in range(len(source))]


def _files(builder):
  return {n: open(os.path.join(builder.data_dir, n), "rb").read()
          for n in sorted(os.listdir(builder.data_dir)) if "array_record" in n}


def test_moving_shapes_is_deterministic(builds):
  assert "tensorflow" not in sys.modules  # built and read without TensorFlow
  a, b, c = builds["a"], builds["b"], builds["c"]
  fa, fb = _files(a), _files(b)
  assert len(fa) == 2 and fa == fb  # identical bytes
  for split in ("train", "test"):
    ra, rc = _records(a, split), _records(c, split)
    assert len(ra) == {"train": 24, "test": 10}[split]
    assert ra[0]["video"].shape == (6, 16, 16, 3) and ra[0]["video"].dtype == np.uint8
    va = np.stack([r["video"] for r in ra])
    assert not np.array_equal(va, np.stack([r["video"] for r in rc]))  # another seed differs
    np.testing.assert_array_equal(va, np.stack([r["video"] for r in _records(b, split)]))


def test_captions_agree_with_labels_and_pixels(builds):
  for split in ("train", "test"):
    for r in _records(builds["a"], split):
      parsed = P.parse_caption(r["caption"].decode())
      assert len(parsed["objects"]) == r["num_objects"]
      assert parsed["background"] == P.BACKGROUND_NAMES[r["background"]]
      for n, obj in enumerate(parsed["objects"]):
        for key, names in (("shape", P.SHAPES), ("color", P.COLOR_NAMES),
                           ("size", P.SIZE_NAMES), ("motion", P.MOTION_NAMES)):
          assert obj[key] == names[r[f"obj{n}_{key}"]]
      spec = P.labels_from_dict(r, fps=r["fps"], frames=6, height=16, width=16)
      diff = np.abs(R.render(spec).astype(int) - r["video"].astype(int))
      assert diff.max() <= 16  # the labels re-render the stored pixels


def test_held_out_combos_only_in_test(builds):
  combos = MS.parse_combos(HELD)
  for r in _records(builds["a"], "train"):
    spec = P.labels_from_dict(r, fps=8.0, frames=6, height=16, width=16)
    assert not P.is_held_out(spec, combos) and r["held_out"] == 0
  test = _records(builds["a"], "test")
  flags = [r["held_out"] for r in test]
  assert sum(flags) == 5  # round(10 * 0.5)
  for r in test:
    spec = P.labels_from_dict(r, fps=8.0, frames=6, height=16, width=16)
    assert P.is_held_out(spec, combos) == bool(r["held_out"])


def test_image_variant(builds):
  records = _records(builds["img"], "train")
  assert len(records) == 24
  for r in records:
    assert r["image"].shape == (16, 16, 3) and "video" not in r and r["fps"] == 0.0
    parsed = P.parse_caption(r["caption"].decode())
    assert all(o["motion"] is None for o in parsed["objects"])
    color = P.COLORS[parsed["objects"][-1]["color"]].astype(float)  # drawn last: on top
    background = P.BACKGROUNDS[parsed["background"]].astype(float)
    nearest = np.linalg.norm(r["image"].astype(float) - color, axis=-1).min()
    assert nearest < 0.5 * np.linalg.norm(background - color)  # a pixel > half covered


def _ramp(frames, h, w):
  """Frame k is a flat gray of level 12 * k (decodable through lossy codecs)."""
  levels = (12 * np.arange(frames)).astype(np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (frames, h, w, 3)).copy()


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("videos")
  w = imageio.get_writer(str(d / "ramp.mp4"), fps=16, macro_block_size=1, quality=10)
  for f in _ramp(20, 24, 40):
    w.append_data(f)
  w.close()
  iio.imwrite(str(d / "anim.gif"), _ramp(6, 20, 20), duration=125, loop=0)
  (d / "frames").mkdir()
  for k, f in enumerate(_ramp(5, 16, 16)):
    Image.fromarray(f).save(str(d / "frames" / f"{k:03d}.png"))
  (d / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  (d / "ramp.txt").write_text("a gray ramp\n")
  (d / "captions.jsonl").write_text(json.dumps({"file": "anim.gif", "caption": "a gif"}) + "\n"
                                    + json.dumps({"file": "broken.mp4", "caption": "bad"}) + "\n")
  (d / "captions.csv").write_text('file,caption\nframes,"frames, in a folder"\n')
  return d


@pytest.fixture(scope="module")
def video_folder_build(video_dir, tmp_path_factory):
  """(config, builder): `video_dir` built as video_folder clips of 4 frames, 8x8, 8 fps."""
  c = default.get_config()
  c.data.name, c.data.video_dir = "video_folder", str(video_dir)
  c.data.data_dir = str(tmp_path_factory.mktemp("video_folder"))
  c.data.source_frames, c.data.source_resolution, c.data.source_fps = 4, 8, 8.0
  return c, build.build_dataset(c)  # must not raise on broken.mp4


def test_video_folder_skips_corrupt_files_and_writes_the_rest(video_folder_build):
  _, builder = video_folder_build
  assert isinstance(builder, VF.VideoFolder)
  report = VF.load_report(builder)
  assert [f["file"] for f in report["failed"]] == ["broken.mp4"]
  assert report["num_skipped"] == 1 and report["num_clips"] == {"train": 3, "test": 0}
  records = {r["source"].decode(): r for r in _records(builder, "train")}
  assert set(records) == {"ramp.mp4", "anim.gif", "frames"}
  assert records["ramp.mp4"]["caption"] == b"a gray ramp"
  assert records["anim.gif"]["caption"] == b"a gif"
  assert records["frames"]["caption"] == b"frames, in a folder"
  for r in records.values():
    assert r["video"].shape == (4, 8, 8, 3) and r["fps"] == 8.0
  # 16 fps source resampled to 8 fps: every other frame (levels 0, 24, 48, 72).
  levels = records["ramp.mp4"]["video"].reshape(4, -1).mean(axis=1)
  np.testing.assert_allclose(levels, [0, 24, 48, 72], atol=4)
  # Frame folder at the default 8 fps: frames 0..3 unchanged.
  np.testing.assert_allclose(records["frames"]["video"].reshape(4, -1).mean(1), [0, 12, 24, 36],
                             atol=0.5)


def test_video_folder_clips_are_scored_by_fvd_alone(video_folder_build):
  c = video_folder_build[0].copy_and_resolve_references()
  c.eval.metrics = ("fvd",)
  assert evaluators.validate_eval_config(c) == []
  real = build.load_split_examples(c, "train", 3)
  fake = 255 - real["video"]
  features = types.SimpleNamespace(features=lambda v: v.reshape(len(v), -1)[:, ::64] / 255.0)
  result = evaluate.evaluate_videos(fake, real["caption"], real["video"], features, fps=8.0,
                                    metrics=evaluators.metrics_from_config(c.eval))
  assert result["fvd"] > 1.0 and result["fvd_num_videos"] == [3, 3]
  assert "caption_accuracy" not in result and "consistency" not in result
  with pytest.raises(ValueError, match="moving-shapes prompts"):  # the default metrics
    evaluate.evaluate_videos(fake, real["caption"], real["video"], features, fps=8.0)


def test_video_io_helpers():
  times = np.arange(10) / 30.0  # 30 fps
  np.testing.assert_array_equal(video_io.pick_frames(times, fps=10.0, num_frames=4), [0, 3, 6, 9])
  # Past the end, the last frame repeats (padding).
  np.testing.assert_array_equal(video_io.pick_frames(times, fps=10.0, num_frames=5)[-1], 9)
  assert video_io.clip_starts(2.0, clip_seconds=0.5, max_clips=0) == [0.0, 0.5, 1.0, 1.5]
  assert video_io.clip_starts(0.4, clip_seconds=0.5, max_clips=1) == []
  frames = np.zeros((1, 20, 40, 3), np.uint8)
  frames[:, :, 10:30] = 200  # the centre 20 columns
  out = video_io.resize_and_crop(frames, 10, 10)
  assert out.shape == (1, 10, 10, 3) and np.all(out == 200)
  with pytest.raises(video_io.VideoReadError):
    video_io.read_video(__file__ + ".missing.mp4", default_fps=8.0)


def test_cut_clips_resamples_pads_and_skips(tmp_path):
  frames = _ramp(20, 6, 6)
  times = np.arange(20) / 10.0  # 2 seconds at 10 fps
  cfg = VF.make_config(video_dir=str(tmp_path), frames=4, height=6, width=6, fps=8.0,
                       clips_per_video=0)
  clips = VF.cut_clips(frames, times, cfg)
  assert [start for _, _, start in clips] == [0.0, 0.5, 1.0, 1.5]  # all 0.5 s clips that fit
  assert all(fps == 8.0 for _, fps, _ in clips)
  # Second clip: times 0.5, 0.625, 0.75, 0.875 s -> source frames 5, 6, 7, 8.
  np.testing.assert_array_equal(clips[1][0][:, 0, 0, 0], 12 * np.array([5, 6, 7, 8]))
  slow = VF.make_config(video_dir=str(tmp_path), frames=4, height=6, width=6, fps=30.0)
  (clip, fps, _), = VF.cut_clips(frames, times, slow)
  assert fps == pytest.approx(10.0)  # never upsampled: the source's 10 fps
  np.testing.assert_array_equal(clip[:, 0, 0, 0], 12 * np.arange(4))
  short = frames[:3], times[:3]
  (padded, _, _), = VF.cut_clips(*short, cfg)
  np.testing.assert_array_equal(padded[:, 0, 0, 0], [0, 12, 24, 24])  # last frame repeated
  skip = VF.make_config(video_dir=str(tmp_path), frames=4, height=6, width=6, fps=8.0,
                        short_clips="skip")
  assert VF.cut_clips(*short, skip) == []
  with pytest.raises(ValueError, match="video_dir"):
    VF.make_config(video_dir=str(tmp_path / "missing"))


def test_vocabulary_config_names_and_checks():
  kw = dict(frames=16, height=32, width=32, fps=8.0, num_train=4096, num_test=64, held_out=HELD,
            two_object_prob=0.0)
  # An unrestricted vocabulary leaves the name (the directory of existing builds) unchanged.
  assert MS.make_config(**kw).name == "f16_r32x32_n4096_seed0_baa58289d1"
  assert MS.make_config(**kw, vocabulary={"speed": ()}).name == MS.make_config(**kw).name
  small = MS.make_config(**kw, vocabulary={"speed": ("fast",), "motion": ("left", "still")})
  assert small.name != MS.make_config(**kw).name
  for split in ("train", "test"):
    for i in range(40):
      for o in MS.sample_example_spec(small, split, i).objects:
        assert o.motion in ("left", "still") and o.speed in (None, "fast")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    MS.make_config(**kw, vocabulary={"motion": ("right", "still")})   # "blue left" held out
  # The experiment config's data.vocabulary reaches the builder config.
  c = default.get_config()
  c.data.vocabulary.speed = ("fast",)
  assert dict(build.builder_config(c).vocabulary) == {"speed": ("fast",)}
  assert build.validate_data_config(c) == []
  c.data.vocabulary.speed, c.data.video_short_clips = ("sideways",), "crop"
  short, vocabulary = build.validate_data_config(c)
  assert short == "data.video_short_clips='crop' is not one of ('pad', 'skip')"
  assert vocabulary.startswith("data.vocabulary: vocabulary speed: ['sideways']")
