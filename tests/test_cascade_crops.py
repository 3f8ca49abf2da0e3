"""Training crops of super-resolution rows (vdm_jax/data/pipeline.py, `data.crop_*`)."""
import numpy as np
import pytest

from configs import imagen_video
from vdm_jax.data import pipeline
from vdm_jax.data import video_io


def _geometry(stage, *, frames=8, size=16, low=(8, 8, 8), crop=(0, 0, 0)):
  return pipeline.Geometry(frames=frames, height=size, width=size, fps=8.0, stage=stage,
                           images_per_video=0, lowres_frames=low[0], lowres_height=low[1],
                           lowres_width=low[2], crop_frames=crop[0], crop_height=crop[1],
                           crop_width=crop[2])


def _record(seed=0, frames=8, size=16):
  video = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), np.uint8)
  return {"video": video, "fps": np.float32(8.0), "caption": b"a clip", "_index": 0}


def _rows(g, record, seeds):
  return [pipeline.MakeRows(g).random_map(record, np.random.default_rng(s)) for s in seeds]


def test_ssr_crop_keeps_lowres_the_block_mean_of_the_cropped_clip():
  g = _geometry("ssr", low=(8, 8, 8), crop=(4, 16, 8))   # time and width cropped, x2 in space
  record = _record()
  full = 2 * record["video"].astype(np.float32) / 255.0 - 1.0   # what the rows are cut from
  starts = set()
  for row in _rows(g, record, range(12)):
    assert row["video"].shape == (4, 16, 8, 3) and row["lowres"].shape == (4, 8, 4, 3)
    # The window is a piece of the clip at an aligned offset...
    hits = [(t, w) for t in range(5) for w in range(0, 9, 2)
            if np.allclose(full[t:t + 4, :, w:w + 8], row["video"], atol=1e-5)]
    assert len(hits) == 1
    starts.add(hits[0])
    # ...and lowres is exactly the lowres video of that window (2x2 block means, uint8).
    crop_u8 = np.round((row["video"] + 1.0) * 127.5).astype(np.uint8)
    want = video_io.resize_frames(crop_u8, 8, 4).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(row["lowres"], want, atol=1e-5)
  assert len(starts) > 3   # random windows


def test_tsr_crop_keeps_lowres_the_strided_frames_of_the_cropped_clip():
  g = _geometry("tsr", low=(4, 16, 16), crop=(4, 8, 16))
  for row in _rows(g, _record(1), range(6)):
    assert row["video"].shape == (4, 8, 16, 3) and row["lowres"].shape == (2, 8, 16, 3)
    np.testing.assert_array_equal(row["lowres"], row["video"][::2])


def test_no_crop_leaves_rows_whole():
  g = _geometry("ssr")
  row = _rows(g, _record(2), [0])[0]
  assert row["video"].shape == (8, 16, 16, 3) and not g.cropped


@pytest.mark.parametrize("crop,match", [
    ((0, 17, 0), r"data.crop_height=17 must lie in \[1, height=16\]"),
    ((3, 0, 0), r"data.crop_frames=3: a crop needs an integer lowres factor"),
    ((0, 0, 5), r"data.crop_width=5"),
])
def test_bad_crops_name_the_key(crop, match):
  c = imagen_video.stage_config("tsr1", "cpu")   # 16 frames from 8: time factor 2
  c.data.crop_frames, c.data.crop_height, c.data.crop_width = crop
  if crop[2]:   # width 5 is not a multiple of the x2 factor of an SSR stage
    c = imagen_video.stage_config("ssr1", "cpu")
    c.data.crop_frames, c.data.crop_height, c.data.crop_width = crop
  with pytest.raises(ValueError, match=match):
    pipeline.stage_geometry(c)


def test_cpu_and_paper_crops_are_valid_windows():
  for scale in ("cpu", "paper"):
    for name in imagen_video.STAGE_ORDER:
      g = pipeline.stage_geometry(imagen_video.stage_config(name, scale))
      assert all(n % f == 0 for n, f in zip(g.window, g.factors)), (name, scale)
