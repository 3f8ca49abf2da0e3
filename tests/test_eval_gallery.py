"""Video writers (GIF, MP4) and the static HTML gallery."""
import os
import re

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from vdm_jax.media import gallery


def _video(frames=5, h=8, w=10):
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
  return np.concatenate([np.roll(base, t, axis=2) for t in range(frames)])  # [T, H, W, 3]


def test_write_gif_round_trips(tmp_path):
  video = np.zeros((4, 6, 6, 3), np.uint8)
  video[:, :, :, 0] = np.array([0, 80, 160, 240])[:, None, None]  # 4 distinct frames
  path = gallery.write_video(str(tmp_path / "sub" / "a.gif"), video, fps=4, scale=2)
  with Image.open(path) as im:
    assert im.n_frames == 4 and im.size == (12, 12)
    assert im.info["duration"] == 250 and im.info["loop"] == 0
    im.seek(2)
    assert np.asarray(im.convert("RGB"))[0, 0, 0] == 160


def _read_mp4(path):
  reader = imageio.get_reader(path, format="FFMPEG")
  frames = np.stack([f for f in reader.iter_data()])
  reader.close()
  return frames


def test_write_mp4_round_trips(tmp_path):
  video = _video(frames=6, h=5, w=6)  # scale 2: every pixel a 2x2 block (chroma is 4:2:0)
  frames = _read_mp4(gallery.write_video(str(tmp_path / "a.mp4"), video, fps=8, scale=2))
  assert frames.shape == (6, 10, 12, 3)
  assert np.abs(frames[:, ::2, ::2].astype(float) - video).mean() < 8  # lossy but close
  flat = np.full((3, 9, 11, 3), (200, 40, 90), np.uint8)  # odd sides are padded to even
  frames = _read_mp4(gallery.write_video(str(tmp_path / "b.mp4"), flat, fps=8))
  assert frames.shape == (3, 10, 12, 3)
  assert np.abs(frames.astype(float) - flat[0, 0, 0]).max() < 8


def test_write_video_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="extension"):
    gallery.write_video(str(tmp_path / "a.avi"), _video(), fps=8)
  with pytest.raises(ValueError, match="uint8"):
    gallery.write_video(str(tmp_path / "a.gif"), _video().astype(np.float32), fps=8)
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    gallery.write_video(str(tmp_path / "a.gif"), np.zeros((4, 4, 3), np.uint8), fps=8)


def test_write_gallery_links_relative_gifs(tmp_path, monkeypatch):
  out = tmp_path / "gallery"
  base = gallery.write_gif(str(out / "p0_base.gif"), _video(), fps=8)
  real = gallery.write_gif(str(out / "p0_real.gif"), _video(), fps=8)
  # A relative out dir, as `--out=demo_out` gives: paths relative to the current directory.
  monkeypatch.chdir(tmp_path)
  ssr = gallery.write_gif(os.path.join("gallery", "gifs", "p0_ssr.gif"), _video(h=16, w=20),
                          fps=8)
  entries = [{"prompt": "a small red circle <moving> left slowly on a black background",
              "stages": [("base", base), ("ssr1", ssr)], "real": real}]
  figures = {"caption accuracy": {"base": {"shape": 0.5, "all": 0.25}, "ssr1": {"all": 0.5}},
             "fvd": {"base": 123.456789}}
  page = gallery.write_gallery("gallery", entries, figures, title="demo")
  assert page == os.path.join("gallery", "index.html")
  text = open(page, encoding="utf-8").read()
  srcs = re.findall(r'<img src="([^"]+)"', text)
  assert srcs == ["p0_base.gif", "gifs/p0_ssr.gif", "p0_real.gif"]
  assert all(not os.path.isabs(s) and (out / s).exists() for s in srcs)
  assert "&lt;moving&gt;" in text and "<moving>" not in text  # prompts are escaped
  assert "<th>shape</th>" in text and "<td>0.5</td>" in text and "123.5" in text
  assert ssr.endswith("p0_ssr.gif")
