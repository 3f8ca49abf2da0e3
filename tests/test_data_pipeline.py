"""grain pipelines: sharding, resumption, temporal crops, joint image-video rows, SR lowres."""
import hashlib

import numpy as np
import pytest

from configs import default
from vdm_jax.data import build
from vdm_jax.data import pipeline
from vdm_jax.data.moving_shapes import grammar as P


class FakeTextStore:
  """The text-store protocol: lookup(caption) -> (emb [L, D], mask [L]); the caption is
  recoverable from emb[0, 0] through `captions`."""
  max_length, dim = 4, 3

  def __init__(self):
    self.captions = {}

  def lookup(self, caption):
    key = float(int(hashlib.md5(caption.encode()).hexdigest()[:6], 16))
    self.captions[key] = caption
    emb = np.zeros((self.max_length, self.dim), np.float32)
    emb[0, 0] = key
    return emb, np.arange(self.max_length) < 2


def _config(data_dir, **overrides):
  c = default.get_config()
  c.data.data_dir = str(data_dir)
  c.data.num_train_examples, c.data.num_eval_examples = 24, 6
  c.data.source_frames, c.data.source_resolution, c.data.source_fps = 8, 16, 8.0
  c.frames, c.fps, c.height, c.width = 4, 4.0, 16, 16
  c.train.batch_size = 4
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  build.build_dataset(_config(d))
  build.build_dataset(_config(d, **{"data.name": "moving_shapes_images"}))
  return d


def _source(config):
  return build.make_builder(config).as_data_source()["train"]


def test_hosts_shards_are_disjoint_and_cover_the_data(data_dir):
  c = _config(data_dir)
  seen = []
  for index in range(2):
    it = pipeline.make_train_iterator(c, process_index=index, process_count=2, num_epochs=1)
    indices = np.concatenate([b["index"] for b in it])
    assert len(indices) == 12 and len(set(indices)) == 12
    seen.append(set(indices.tolist()))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(24))


def test_resumed_iterator_repeats_the_uninterrupted_one(data_dir):
  c = _config(data_dir)
  store = FakeTextStore()
  it = pipeline.make_train_iterator(c, text_store=store, process_index=0, process_count=1)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]  # crosses the epoch boundary (6 batches / epoch)
  resumed = pipeline.make_train_iterator(c, text_store=store, process_index=0, process_count=1)
  resumed.set_state(state)
  got = [next(resumed) for _ in range(4)]
  for e, g in zip(expected, got):
    assert set(e) == {"video", "fps", "is_image", "index", "text_emb", "text_mask"}
    for key in e:
      np.testing.assert_array_equal(e[key], g[key])
  assert not np.array_equal(expected[0]["video"], expected[1]["video"])


def test_batches_are_temporal_crops_at_the_target_fps(data_dir):
  c = _config(data_dir)
  source = _source(c)
  store = FakeTextStore()
  batch = next(pipeline.make_train_iterator(c, text_store=store, process_index=0,
                                            process_count=1))
  assert batch["video"].shape == (4, 4, 16, 16, 3) and batch["video"].dtype == np.float32
  assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
  np.testing.assert_array_equal(batch["fps"], 4.0)  # 8 fps source, stride 2
  assert batch["text_emb"].shape == (4, 4, 3) and batch["text_mask"].dtype == bool
  for row in range(4):
    record = source[int(batch["index"][row])]
    clip = np.round((batch["video"][row] + 1.0) * 127.5).astype(np.uint8)
    starts = [s for s in range(2) if np.array_equal(record["video"][s:s + 7:2], clip)]
    assert starts, "each row is the stored clip at stride 2 from some start"
    assert store.captions[float(batch["text_emb"][row, 0, 0])] == record["caption"].decode()


def _frame_of(video_uint8, image):
  """Whether `image` [H, W, 3] uint8 is one of the frames of `video_uint8` [T, H, W, 3]."""
  return any(np.array_equal(frame, image) for frame in video_uint8)


def test_joint_image_video_batches(data_dir):
  c = _config(data_dir, **{"data.images_per_video": 2})
  store = FakeTextStore()
  batch = next(pipeline.make_train_iterator(c, text_store=store, process_index=0,
                                            process_count=1))
  # the 4 video rows keep their clips and captions with motion
  assert batch["video"].shape == (4, 4, 16, 16, 3)
  np.testing.assert_array_equal(batch["is_image"], False)
  np.testing.assert_array_equal(batch["fps"], 4.0)
  for row in range(4):
    caption = store.captions[float(batch["text_emb"][row, 0, 0])]
    assert all(o["motion"] is not None for o in P.parse_caption(caption)["objects"])
  # 2 images per video, packed as single frames: [8, 1, H, W, 3]
  img = {k.removeprefix("images/"): v for k, v in batch.items() if k.startswith("images/")}
  assert set(img) == {"video", "fps", "is_image", "index", "text_emb", "text_mask"}
  assert img["video"].shape == (8, 1, 16, 16, 3) and img["text_emb"].shape == (8, 4, 3)
  np.testing.assert_array_equal(img["is_image"], True)
  np.testing.assert_array_equal(img["fps"], 0.0)
  source = _source(c)
  for row in range(8):
    record = source[int(img["index"][row])]
    frame = np.round((img["video"][row, 0] + 1) * 127.5).astype(np.uint8)
    assert _frame_of(record["video"], frame), "an image is a frame of the clip it names"
    caption = store.captions[float(img["text_emb"][row, 0, 0])]
    assert caption == pipeline.image_caption(record)
    assert all(o["motion"] is None for o in P.parse_caption(caption)["objects"])
  # Images from the image variant dataset.
  c2 = _config(data_dir, **{"data.images_per_video": 1,
                            "data.image_source": "moving_shapes_images"})
  b2 = next(pipeline.make_train_iterator(c2, process_index=0, process_count=1))
  images = build.make_builder(c2, name="moving_shapes_images").as_data_source()["train"]
  assert b2["images/video"].shape == (4, 1, 16, 16, 3)
  for row in range(4):
    want = images[int(b2["images/index"][row])]["image"]
    np.testing.assert_array_equal(
        np.round((b2["images/video"][row, 0] + 1) * 127.5).astype(np.uint8), want)
  # An image-only dataset as the main source: image rows tiled over the T frames.
  b3 = next(pipeline.make_train_iterator(_config(data_dir, **{"data.name":
                                                              "moving_shapes_images"}),
                                         process_index=0, process_count=1))
  np.testing.assert_array_equal(b3["is_image"], True)
  np.testing.assert_array_equal(b3["video"], np.broadcast_to(b3["video"][:, :1],
                                                             b3["video"].shape))
  with pytest.raises(ValueError, match="temporal SR"):
    pipeline.stage_geometry(_config(data_dir, **{"stage": "tsr", "data.lowres_frames": 2,
                                                 "data.images_per_video": 1}))


def test_joint_images_of_a_cropped_ssr_stage(data_dir):
  c = _config(data_dir, **{"stage": "ssr", "data.lowres_height": 8, "data.lowres_width": 8,
                           "data.images_per_video": 1, "data.crop_frames": 2,
                           "data.crop_height": 8, "data.crop_width": 8})
  batch = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  assert batch["video"].shape == (4, 2, 8, 8, 3) and batch["lowres"].shape == (4, 2, 4, 4, 3)
  assert batch["images/video"].shape == (4, 1, 8, 8, 3)
  assert batch["images/lowres"].shape == (4, 1, 4, 4, 3)
  pixels = (batch["images/video"] + 1.0) * 127.5
  block_mean = pixels.reshape(4, 1, 4, 2, 4, 2, 3).mean(axis=(3, 5))
  np.testing.assert_allclose((batch["images/lowres"] + 1.0) * 127.5, block_mean, atol=0.51)


def test_super_resolution_lowres(data_dir):
  c = _config(data_dir, **{"stage": "ssr", "data.lowres_height": 8, "data.lowres_width": 8})
  batch = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  assert batch["lowres"].shape == (4, 4, 8, 8, 3)
  pixels = (batch["video"] + 1.0) * 127.5
  block_mean = pixels.reshape(4, 4, 8, 2, 8, 2, 3).mean(axis=(3, 5))
  np.testing.assert_allclose((batch["lowres"] + 1.0) * 127.5, block_mean, atol=0.51)
  c = _config(data_dir, **{"stage": "tsr", "data.lowres_frames": 2})
  batch = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  assert batch["lowres"].shape == (4, 2, 16, 16, 3)
  np.testing.assert_array_equal(batch["lowres"], batch["video"][:, ::2])
  with pytest.raises(ValueError, match="lowres_frames"):
    pipeline.stage_geometry(_config(data_dir, **{"stage": "tsr", "data.lowres_frames": 3}))
  with pytest.raises(ValueError, match="lowres_height"):
    pipeline.stage_geometry(_config(data_dir, **{"stage": "ssr"}))


def test_load_split_examples(data_dir):
  c = _config(data_dir)
  ex = build.load_split_examples(c, "test", 4)
  assert ex["video"].shape == (4, 8, 16, 16, 3) and ex["video"].dtype == np.uint8
  assert len(ex["caption"]) == 4 and ex["fps"].tolist() == [8.0] * 4
  assert ex["labels"]["num_objects"].shape == (4,) and "held_out" in ex["labels"]
  for i in range(4):
    labels = {k: v[i] for k, v in ex["labels"].items()}
    spec = P.labels_from_dict(labels, fps=8.0, frames=8, height=16, width=16)
    assert P.caption(spec) == ex["caption"][i]
  with pytest.raises(FileNotFoundError, match="build_data"):
    build.load_split_examples(_config(data_dir, **{"data.build_seed": 5}), "test", 2)


def test_to_global_batch_shards_the_batch_axis():
  import jax  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  local = {"video": np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3),
           "is_image": np.arange(8) % 2 == 0}
  out = pipeline.to_global_batch(local, mesh)
  for key, value in local.items():
    assert out[key].shape == value.shape
    np.testing.assert_array_equal(np.asarray(out[key]), value)
    assert out[key].sharding.spec[0] == ("data", "fsdp")
    assert len(out[key].addressable_shards) == 8
    assert out[key].addressable_shards[0].data.shape[0] == 1
