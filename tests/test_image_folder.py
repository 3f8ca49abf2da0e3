"""tfds builder `image_folder`: the user's captioned images (good ones kept with their captions
and pixels, bad ones skipped and reported), its config keys, and the train pipeline's image rows
(tiled over the frames, is_image True, fps 0). Tiny images only."""
import contextlib
import io
import json

import numpy as np
from PIL import Image
import pytest

from configs import default
from vdm_jax import errors
from vdm_jax.data import build
from vdm_jax.data import image_folder as IF
from vdm_jax.data import pipeline
from vdm_jax.data import video_folder as VF
from vdm_jax.train import inputs

RED, BLUE, GRAY, GREEN = (200, 30, 40), (20, 40, 210), 90, (10, 200, 10)
CAPTIONS = {"red.png": "a red square", "blue.jpg": "a blue photo", "gray.png": "a gray card",
            "rgba.png": "a green sticker", "bands.png": "gray and white bands on black"}


def _solid(color, h, w, mode="RGB"):
  return Image.new(mode, (w, h), color)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  _solid(RED, 24, 40).save(d / "red.png")
  _solid(BLUE, 20, 20).save(d / "blue.jpg", quality=95)
  _solid(GRAY, 12, 12, "L").save(d / "gray.png")           # grayscale: converted, not skipped
  _solid(GREEN + (128,), 10, 10, "RGBA").save(d / "rgba.png")  # alpha: dropped
  bands = np.zeros((16, 32, 3), np.uint8)  # columns: 8 black, 8 gray, 8 white, 8 black
  bands[:, 8:16], bands[:, 16:24] = 100, 255
  Image.fromarray(bands).save(d / "bands.png")
  (d / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(2048))
  noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(noise).save(d / "whole.png")
  data = (d / "whole.png").read_bytes()
  (d / "whole.png").unlink()
  (d / "truncated.png").write_bytes(data[:len(data) * 3 // 5])
  _solid(RED, 8, 8).save(d / "nocap.png")                   # no caption anywhere
  _solid(RED, 8, 8).save(d / "blank.png")
  (d / "blank.txt").write_text("  \n")                       # an empty caption: not a caption
  (d / "sub").mkdir()                                        # sub-folders are not searched
  _solid(RED, 8, 8).save(d / "sub" / "deep.png")
  (d / "red.txt").write_text(CAPTIONS["red.png"] + "\n")
  (d / "bands.txt").write_text(CAPTIONS["bands.png"])
  rows = [{"file": n, "caption": CAPTIONS[n]} for n in ("blue.jpg", "rgba.png")]
  rows += [{"file": "corrupt.png", "caption": "bad"}, {"file": "truncated.png", "caption": "cut"},
           {"file": "deep.png", "caption": "not searched"}]
  (d / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (d / "captions.csv").write_text('file,caption\ngray.png,"a gray card"\n')
  return d


def _config(image_dir, data_dir, **data):
  c = default.get_config()
  c.data.name, c.data.image_dir, c.data.data_dir = "image_folder", str(image_dir), str(data_dir)
  c.data.source_resolution = 8
  c.frames, c.fps, c.height, c.width = 4, 4.0, 8, 8
  c.train.batch_size = 5
  for key, value in data.items():
    c.data[key] = value
  return c


@pytest.fixture(scope="module")
def built(image_dir, tmp_path_factory):
  """(config, builder, printed output): `image_dir` built at 8x8."""
  c = _config(image_dir, tmp_path_factory.mktemp("image_folder"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    builder = build.build_dataset(c)  # must not raise on the bad files
  return c, builder, out.getvalue()


def _records(builder, split="train"):
  source = builder.as_data_source()[split]
  return {r["source"].decode(): r for r in (source[i] for i in range(len(source)))}


def test_builds_exactly_the_good_images_with_their_captions_and_pixels(built):
  _, builder, _ = built
  assert isinstance(builder, IF.ImageFolder)
  records = _records(builder)
  assert set(records) == set(CAPTIONS)
  for name, r in records.items():
    assert r["caption"].decode() == CAPTIONS[name], name
    assert r["image"].shape == (8, 8, 3) and r["image"].dtype == np.uint8, name
    assert "video" not in r and r["fps"] == 0.0
  pixels = {n: r["image"].astype(int) for n, r in records.items()}
  np.testing.assert_allclose(pixels["red.png"], np.broadcast_to(RED, (8, 8, 3)), atol=1)
  np.testing.assert_allclose(pixels["blue.jpg"], np.broadcast_to(BLUE, (8, 8, 3)), atol=4)
  np.testing.assert_array_equal(pixels["gray.png"], np.full((8, 8, 3), GRAY))
  np.testing.assert_array_equal(pixels["rgba.png"], np.broadcast_to(GREEN, (8, 8, 3)))
  # 16x32 scaled to cover 8x8 (8x16, block means), then the centre 8 columns: 4 gray, 4 white.
  np.testing.assert_array_equal(pixels["bands.png"][:, :4], 100)
  np.testing.assert_array_equal(pixels["bands.png"][:, 4:], 255)


def test_bad_files_are_skipped_counted_and_named(built):
  _, builder, printed = built
  report = IF.load_report(builder)
  failed = {f["file"]: f["reason"] for f in report["failed"]}
  assert set(failed) == {"corrupt.png", "truncated.png"}
  assert "cannot identify image file" in failed["corrupt.png"]
  assert "truncated" in failed["truncated.png"]
  assert report["uncaptioned"] == ["blank.png", "nocap.png"]
  assert {c["file"]: c["mode"] for c in report["converted"]} == {"gray.png": "L",
                                                                "rgba.png": "RGBA"}
  assert report["num_files"] == 9 and report["num_skipped"] == 4
  assert report["num_images"] == {"train": 5, "test": 0}
  assert ("9 files -> {'train': 5, 'test': 0} images; skipped 4 (failed 2, uncaptioned 2); "
          "2 converted to RGB") in printed
  assert "re-save or remove them" in printed and "add a sidecar <name>.txt" in printed


def test_split_examples_and_training_captions_read_the_images(built):
  c, _, _ = built
  real = build.load_split_examples(c, "train", 10)
  assert real["video"].shape == (5, 1, 8, 8, 3) and real["is_image"].all()
  assert np.all(real["fps"] == 0.0)
  assert dict(zip(real["labels"]["source"], real["caption"])) == CAPTIONS
  assert sorted(inputs.training_captions(c)) == sorted(CAPTIONS.values())


def test_train_pipeline_tiles_each_image_over_the_frames(built):
  c, builder, _ = built
  source = builder.as_data_source()["train"]
  batches = list(pipeline.make_train_iterator(c, process_index=0, process_count=1,
                                              num_epochs=1))
  assert len(batches) == 1
  b = batches[0]
  assert b["video"].shape == (5, 4, 8, 8, 3) and b["video"].dtype == np.float32
  assert b["is_image"].dtype == np.bool_ and b["is_image"].all()
  assert np.all(b["fps"] == 0.0)
  assert sorted(b["index"].tolist()) == list(range(5))
  for row, index in zip(b["video"], b["index"]):
    expected = source[int(index)]["image"].astype(np.float32) / 127.5 - 1.0
    for t in range(4):
      np.testing.assert_allclose(row[t], expected, atol=1e-6)


def test_test_fraction_splits_by_file_name(image_dir, tmp_path):
  c = _config(image_dir, tmp_path, image_test_fraction=0.3)
  with contextlib.redirect_stdout(io.StringIO()):
    builder = build.build_dataset(c)
  expected = {s: {n for n in CAPTIONS if VF.split_of(n, 0.3) == s} for s in ("train", "test")}
  assert expected["train"] and expected["test"]
  for split in ("train", "test"):
    assert set(_records(builder, split)) == expected[split]


def test_nothing_usable_and_missing_settings_are_clear_errors(tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "corrupt.png").write_bytes(b"not a png at all")
  (bad / "corrupt.txt").write_text("a caption")
  _solid(RED, 8, 8).save(bad / "nocap.png")
  with pytest.raises(IF.NoUsableImagesError) as info:
    build.build_dataset(_config(bad, tmp_path / "data"))
  assert isinstance(info.value, errors.UserError)
  message = str(info.value)
  assert str(bad) in message and "all 2 skipped" in message
  assert "corrupt.png: UnidentifiedImageError" in message and "re-save or remove" in message
  assert "nocap.png" in message and "add a sidecar" in message
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("no images here")
  with pytest.raises(IF.NoUsableImagesError, match="No image in .*empty.*top level"):
    build.build_dataset(_config(empty, tmp_path / "data2"))
  # The config: image_folder without image_dir names what to set; a missing folder is named.
  c = _config("", tmp_path / "data3")
  assert build.validate_data_config(_config(bad, tmp_path)) == []
  (problem,) = build.validate_data_config(c)
  assert "data.name='image_folder' needs data.image_dir" in problem
  with pytest.raises(errors.ConfigError, match="data.image_dir is not set"):
    build.builder_config(c)
  with pytest.raises(IF.ImageDirError, match="no_images_here.*does not exist"):
    build.builder_config(_config(tmp_path / "no_images_here", tmp_path))
  c = _config(bad, tmp_path, image_test_fraction=1.0)
  assert build.validate_data_config(c) == ["data.image_test_fraction=1.0 must lie in [0, 1)"]
