"""Faults on the input side ("Nothing silently corrupt"): a corrupt text embedding store, bad
files in a video folder (empty, audio only, huge, looping links, a FIFO), a missing or useless
folder, and bad prompts (empty, too long, unknown characters). Each is refused with one clear
error or skipped, counted and named; nothing good is lost. Tiny inputs only."""
import json
import logging
import os
import struct
import subprocess
import types
import warnings

import imageio
import imageio_ffmpeg
import ml_collections
import numpy as np
from PIL import Image
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from vdm_jax import errors
from vdm_jax import text
from vdm_jax.data import video_folder as VF
from vdm_jax.data import video_io
from vdm_jax.text import encoder as encoder_lib
from vdm_jax.text import store as store_lib
from vdm_jax.text import tokenization

# imageio runs ffmpeg in a subprocess (fork + exec at once), which the JAX fork warning flags.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
TINY_T5 = os.path.join(os.path.dirname(__file__), "fixtures", "text", "tiny_t5")
CAPTIONS = ["a red circle moving left", "a blue square moving up"]


# ---------------------------------------------------------------------- text embedding store


def _store(n=2, length=4, dim=3):
  rng = np.random.default_rng(0)
  mask = np.ones((n, length), bool)
  mask[:, length - 1] = False
  return text.TextEmbeddingStore(
      captions=CAPTIONS[:n], embeddings=rng.normal(size=(n, length, dim)).astype(np.float32),
      masks=mask, encoder_name="t5")


def _payload_offset(path, tensor):
  """Absolute file offset of `tensor`'s first byte in a safetensors file."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  return 8 + n + header[tensor]["data_offsets"][0]


def _flip(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def test_store_records_a_sha256_per_tensor_and_index_and_round_trips(tmp_path):
  store = _store()
  path = str(tmp_path / "store.safetensors")
  store.save(path)
  with safe_open(path, framework="numpy") as f:
    meta = f.metadata()
    emb = f.get_tensor("embeddings")
  assert meta["sha256_embeddings"] == store_lib.tensor_sha256(emb)
  assert {"sha256_masks", "sha256_index"} <= set(meta)
  loaded = text.TextEmbeddingStore.load(path)
  for caption in CAPTIONS:
    for a, b in zip(loaded.lookup(caption), store.lookup(caption)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tensor", ["embeddings", "masks"])
def test_a_flipped_byte_in_a_tensor_is_refused_naming_file_and_tensor(tmp_path, tensor):
  path = str(tmp_path / "store.safetensors")
  _store().save(path)
  _flip(path, _payload_offset(path, tensor) + 5)
  with pytest.raises(text.CorruptStoreError) as info:
    text.TextEmbeddingStore.load(path)
  message = str(info.value)
  assert path in message and f"tensor {tensor!r}" in message
  assert "delete it" in message and "rebuilds it from the captions" in message
  other = "masks" if tensor == "embeddings" else "embeddings"
  assert other not in message.split("delete it")[0]  # only the damaged tensor is named
  assert isinstance(info.value, errors.UserError) and isinstance(info.value, ValueError)


def test_a_changed_caption_in_the_index_is_refused(tmp_path):
  path = str(tmp_path / "store.safetensors")
  _store().save(path)
  data = open(path, "rb").read()
  assert data.count(b"circle") == 1
  open(path, "wb").write(data.replace(b"circle", b"cirble"))  # same length: valid JSON still
  with pytest.raises(text.CorruptStoreError, match="the caption index"):
    text.TextEmbeddingStore.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.02])  # cut in the payload, cut in the header
def test_a_truncated_store_is_refused_naming_the_file(tmp_path, keep):
  path = str(tmp_path / "store.safetensors")
  _store().save(path)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:max(1, int(len(data) * keep))])
  with pytest.raises(text.CorruptStoreError, match="truncated") as info:
    text.TextEmbeddingStore.load(path)
  assert path in str(info.value) and "delete it" in str(info.value)


def test_an_old_store_without_checksums_loads_with_a_warning(tmp_path, caplog):
  store = _store()
  path = str(tmp_path / "old.safetensors")
  emb, mask = (np.stack([store.lookup(c)[i] for c in CAPTIONS]) for i in (0, 1))
  save_file({"embeddings": emb, "masks": mask}, path, metadata={
      "format": store_lib.FORMAT, "version": store_lib.VERSION,
      "captions": json.dumps(CAPTIONS), "max_length": "4", "dim": "3", "encoder": "t5"})
  with caplog.at_level(logging.WARNING):
    loaded = text.TextEmbeddingStore.load(path)
  assert any("no checksums" in r.getMessage() and path in r.getMessage()
             for r in caplog.records)
  np.testing.assert_array_equal(loaded.lookup(CAPTIONS[1])[0], emb[1])


class _FakeEncoder:
  """Deterministic stand-in for a TextEncoder: row = hash of the caption."""
  name, max_length, dim = "t5", 4, 3

  def __init__(self):
    self.calls = 0

  def encode(self, prompts):
    self.calls += 1
    emb = np.stack([np.full((4, 3), len(p), np.float32) for p in prompts])
    return emb, np.ones((len(prompts), 4), bool)


def test_load_or_build_store_refuses_a_corrupt_file_and_rebuilds_once_deleted(tmp_path):
  path = str(tmp_path / "store.safetensors")
  cfg = ml_collections.ConfigDict(dict(encoder="t5", max_length=4, store_path=path))
  text.load_or_build_store(cfg, CAPTIONS, encoder=_FakeEncoder())
  _flip(path, _payload_offset(path, "embeddings"))
  damaged = open(path, "rb").read()
  with pytest.raises(text.CorruptStoreError, match="delete it"):
    text.load_or_build_store(cfg, CAPTIONS, encoder=_FakeEncoder())
  assert open(path, "rb").read() == damaged  # nothing overwritten behind the user's back
  os.remove(path)  # what the message says to do
  encoder = _FakeEncoder()
  rebuilt = text.load_or_build_store(cfg, CAPTIONS, encoder=encoder)
  assert encoder.calls == 1 and rebuilt.captions == CAPTIONS
  np.testing.assert_array_equal(text.TextEmbeddingStore.load(path).lookup(CAPTIONS[0])[0],
                                np.full((4, 3), len(CAPTIONS[0]), np.float32))


# ---------------------------------------------------------------------- video folder


def _ffmpeg(*args):
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args],
                 check=True, timeout=120)


def _ramp_mp4(path, frames=12, h=24, w=32):
  writer = imageio.get_writer(str(path), fps=8, macro_block_size=1, quality=10)
  for k in range(frames):
    writer.append_data(np.full((h, w, 3), 12 * k, np.uint8))
  writer.close()


@pytest.fixture(scope="module")
def huge_mp4(tmp_path_factory):
  """8000x8000, two solid red frames: 190 kB on disk, 384 MB decoded at full size."""
  path = tmp_path_factory.mktemp("huge") / "huge.mp4"
  _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=8000x8000:d=0.25:r=8", "-c:v", "libx264",
          "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
  return path


@pytest.fixture(scope="module")
def tone_mp4(tmp_path_factory):
  """A sine tone: audio only, in an .mp4 container."""
  path = tmp_path_factory.mktemp("tone") / "tone.mp4"
  _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.3", "-c:a", "aac", str(path))
  return path


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory, huge_mp4, tone_mp4):
  d = tmp_path_factory.mktemp("messy")
  _ramp_mp4(d / "good.mp4")
  os.link(huge_mp4, d / "huge.mp4")
  os.link(tone_mp4, d / "tone.mp4")
  (d / "zero.mp4").write_bytes(b"")
  (d / "nocap.mp4").write_bytes(open(d / "good.mp4", "rb").read())
  (d / "nocap.txt").write_text("  \n")  # an empty caption: not a caption
  os.symlink(".", d / "loop")  # a folder link back to the folder itself
  os.symlink("spin.mp4", d / "spin.mp4")  # a link to itself
  os.symlink("nowhere.mp4", d / "gone.mp4")  # a broken link
  os.mkfifo(d / "pipe.mp4")  # ffmpeg would wait on it forever
  (d / "cover.png").write_bytes(b"")  # makes 'loop' (= the folder) look like a frame folder
  captions = {n: f"video {n}" for n in ("good.mp4", "huge.mp4", "tone.mp4", "zero.mp4",
                                        "loop", "spin.mp4", "gone.mp4", "pipe.mp4")}
  (d / "captions.jsonl").write_text(
      "".join(json.dumps({"file": k, "caption": v}) + "\n" for k, v in captions.items()))
  return d


def _build(video_dir, data_dir, **overrides):
  cfg = VF.make_config(video_dir=str(video_dir), **dict(dict(frames=2, height=8, width=8,
                                                             fps=8.0), **overrides))
  builder = VF.VideoFolder(config=cfg, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def test_bad_files_are_skipped_counted_and_named_and_the_rest_is_built(messy_dir, tmp_path,
                                                                       caplog, capsys):
  with caplog.at_level(logging.WARNING):
    builder = _build(messy_dir, tmp_path)
  report = VF.load_report(builder)
  failed = {f["file"]: f["reason"] for f in report["failed"]}
  assert set(failed) == {"zero.mp4", "tone.mp4", "loop", "spin.mp4", "gone.mp4", "pipe.mp4"}
  assert "empty file (0 bytes)" in failed["zero.mp4"]
  assert "no video stream" in failed["tone.mp4"] and "audio" in failed["tone.mp4"]
  assert "symlink loop" in failed["loop"]
  assert "looping symlink" in failed["spin.mp4"] and "looping symlink" in failed["gone.mp4"]
  assert "not a regular file" in failed["pipe.mp4"]
  assert report["uncaptioned"] == ["nocap.mp4"]
  assert report["num_skipped"] == 7 and report["num_files"] == 9
  logged = "\n".join(r.getMessage() for r in caplog.records)
  for name in list(failed) + ["nocap.mp4"]:
    assert f"skipping {name}" in logged or f"skipping unreadable {name}" in logged, name
  assert "skipped 7 (failed 6, uncaptioned 1, too short 0); 1 decoded scaled down" in (
      capsys.readouterr().out)
  # Nothing good lost: the small video and the huge one (read scaled down) are both there.
  source = builder.as_data_source()["train"]
  records = {r["source"].decode(): r for r in (source[i] for i in range(len(source)))}
  assert set(records) == {"good.mp4", "huge.mp4"}
  assert report["resized"] == [{"file": "huge.mp4", "from": [8000, 8000],
                                "to": [4096, 4096]}]
  red = records["huge.mp4"]["video"].astype(int)
  assert red.shape == (2, 8, 8, 3) and np.all(red[..., 0] > 200) and np.all(red[..., 1:] < 60)
  np.testing.assert_allclose(records["good.mp4"]["video"].reshape(2, -1).mean(1), [0, 12],
                             atol=4)


def test_huge_frames_are_decoded_within_the_memory_bounds(huge_mp4):
  frames, times, notes = video_io.decode_video(str(huge_mp4), default_fps=8.0,
                                               max_frame_pixels=300 * 300, min_size=(16, 16))
  assert notes.source_size == (8000, 8000) and notes.resized
  assert frames.shape == (2, 300, 300, 3) and notes.cut_at_seconds is None
  np.testing.assert_allclose(times, [0.0, 0.125])
  # A byte budget for one 300x300 frame keeps the first and says where it stopped; the scale
  # never goes below the clip size (min_size) to fit more.
  frames, _, notes = video_io.decode_video(str(huge_mp4), default_fps=8.0,
                                           max_frame_pixels=300 * 300,
                                           max_bytes=300 * 300 * 3, min_size=(300, 300))
  assert frames.shape == (1, 300, 300, 3) and notes.cut_at_seconds == 0.125
  with pytest.raises(video_io.VideoReadError, match="cannot cover"):
    video_io.decode_video(str(huge_mp4), default_fps=8.0, max_frame_pixels=100,
                          min_size=(64, 64))


def test_decode_scale_arithmetic():
  assert video_io.decode_scale(100, 100, 10, max_frame_pixels=10_000, max_bytes=10**9) == 1.0
  assert video_io.decode_scale(200, 200, None, max_frame_pixels=10_000,
                               max_bytes=10**9) == pytest.approx(0.5)
  # 100 frames of 100x100x3 = 3 MB against 750 kB: half the side.
  assert video_io.decode_scale(100, 100, 100, max_frame_pixels=10**6,
                               max_bytes=750_000) == pytest.approx(0.5)
  assert video_io.decode_scale(100, 100, 100, max_frame_pixels=10**6, max_bytes=750_000,
                               min_size=(80, 60)) == pytest.approx(0.8)


def test_huge_frame_images_are_read_scaled_down(tmp_path):
  folder = tmp_path / "frames"
  folder.mkdir()
  for k in range(3):
    Image.new("RGB", (1200, 900), (0, 40 * k, 200)).save(folder / f"{k:02d}.png")
  frames, _, notes = video_io.decode_video(str(folder), default_fps=8.0,
                                           max_frame_pixels=120 * 90)
  assert notes.source_size == (1200, 900) and frames.shape == (3, 90, 120, 3)
  np.testing.assert_array_equal(frames[2, 0, 0], [0, 80, 200])


def test_a_missing_video_dir_is_one_clear_error_naming_it(tmp_path):
  missing = tmp_path / "no_videos_here"
  with pytest.raises(VF.VideoDirError, match="no_videos_here.*does not exist") as info:
    VF.make_config(video_dir=str(missing))
  assert isinstance(info.value, (FileNotFoundError)) and isinstance(info.value, ValueError)
  assert isinstance(info.value, errors.UserError)
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(VF.VideoDirError, match="is not a directory"):
    VF.make_config(video_dir=str(tmp_path / "a_file"))
  # The folder vanishing after the config was made (e.g. an unmounted disk) at build time.
  with pytest.raises(VF.VideoDirError, match="no_videos_here"):
    VF.scan_video_dir(str(missing))


def test_a_folder_with_nothing_usable_is_one_clear_error(tmp_path, tone_mp4):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "zero.mp4").write_bytes(b"")
  os.link(tone_mp4, bad / "tone.mp4")
  _ramp_mp4(bad / "silent.mp4", frames=2)  # no caption
  (bad / "zero.txt").write_text("zero")
  (bad / "tone.txt").write_text("tone")
  with pytest.raises(VF.NoUsableVideosError) as info:
    _build(bad, tmp_path / "data")
  message = str(info.value)
  assert "all 3 skipped" in message and str(bad) in message
  assert "zero.mp4: empty file" in message and "tone.mp4: no video stream" in message
  assert "silent.mp4" in message and "add a sidecar" in message
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(VF.NoUsableVideosError, match="No video in .*empty.*top level"):
    _build(empty, tmp_path / "data2")


# ---------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def t5():
  return text.load_text_encoder(ml_collections.ConfigDict(
      dict(encoder="t5", path=TINY_T5, max_length=8, batch_size=4)))


def _tokenizing_encoder(tokenizer, name, max_length):
  """A TextEncoder for `tokenize` only (no weights: the module is never run)."""
  return encoder_lib.TextEncoder(name=name, module=types.SimpleNamespace(hidden_size=4),
                                 params=None, tokenizer=tokenizer, max_length=max_length)


@pytest.fixture(scope="module")
def minilm_tokens():
  tokenizer = tokenization.JsonTokenizer(
      os.path.join(text.packaged_minilm_dir(), "tokenizer.json"))
  return _tokenizing_encoder(tokenizer, "minilm", 8)


@pytest.mark.parametrize("prompts,index", [(["a red circle", ""], "prompt 1 is"),
                                           (["  \t", "ok", "\n"], "prompts 0, 2 are")])
def test_an_empty_or_blank_prompt_is_refused_naming_its_index(t5, prompts, index):
  with pytest.raises(text.EmptyPromptError, match=index) as info:
    t5.encode_prompts(prompts)
  assert isinstance(info.value, ValueError) and isinstance(info.value, errors.UserError)
  with pytest.raises(text.EmptyPromptError, match=index):
    text.check_prompts(prompts, allow_empty=False)  # the early check, before any encoder
  emb, mask = t5.encode([""])  # the null condition stays what `encode` gives for ""
  assert not mask.any() and not emb.any()


def test_a_long_prompt_is_cut_with_a_warning_counting_the_dropped_tokens(t5, minilm_tokens):
  long_prompt = "a red circle moving left and a blue square moving up"
  pieces = len(t5.tokenizer._sp.encode(long_prompt))  # pylint: disable=protected-access
  with pytest.warns(text.PromptTruncatedWarning) as caught:
    emb, mask = t5.encode_prompts([long_prompt, "a red circle"])
  message = str(caught[0].message)
  assert f"prompt 0 {long_prompt!r} ({pieces + 1 - 8} tokens dropped)" in message
  assert "'a red circle'" not in message
  assert mask[0].all() and emb.shape == (2, 8, 32)
  words = "one two three four five six seven eight nine ten eleven"  # 11 words + [CLS] [SEP]
  with pytest.warns(text.PromptTruncatedWarning, match=r"\(5 tokens dropped\)"):
    ids, _ = minilm_tokens.tokenize([words])
  assert ids.shape == (1, 8) and ids[0, -1] == 102  # [SEP] kept


def test_non_ascii_prompts_encode_and_unknown_characters_are_named(t5, minilm_tokens):
  prompts = ["café crème", "日本語の円", "a red circle 🙂"]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    emb, mask = t5.encode_prompts(prompts)
  assert np.isfinite(emb).all() and mask[:, 0].all()
  unknown = [str(w.message) for w in caught
             if issubclass(w.category, text.PromptUnknownTokensWarning)]
  assert len(unknown) == 1
  assert "'é'" in unknown[0] and "'🙂'" in unknown[0] and "prompt 2" in unknown[0]
  # MiniLM knows accents (stripped) and CJK characters; only the emoji is unknown.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ids, mask = minilm_tokens.tokenize(["café crème", "日本語", "ok 🙂"])
  unknown = [str(w.message) for w in caught
             if issubclass(w.category, text.PromptUnknownTokensWarning)]
  assert len(unknown) == 1 and "prompt 2 'ok 🙂': '🙂'" in unknown[0]
  assert "prompt 0" not in unknown[0] and "prompt 1" not in unknown[0]
  assert (ids[1][mask[1]] != 100).all()  # 日本語: known tokens, not [UNK]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # plain ASCII within L: no warning at all
    minilm_tokens.tokenize(["a red circle moving left"])
