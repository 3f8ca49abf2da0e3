"""tfds builder `video_folder`: a directory of the user's captioned videos, as array_record.

What the directory holds (top level only):
  * video files: .mp4 .webm .mov .mkv .avi .m4v .gif;
  * folders of frame images (.png .jpg ...; sorted by name; an optional `fps.txt` inside
    gives the frame rate, else `default_fps`);
  * captions: a sidecar `<name>.txt` next to `<name>.mp4` (or next to the frame folder
    `<name>/`), else a line in `captions.jsonl` (`{"file": "a.mp4", "caption": "..."}`) or a
    row of `captions.csv` (header `file,caption`). Sidecars win over the mapping files.

Each video gives up to `clips_per_video` non-overlapping clips (0 = all that fit) of `frames`
frames at fps = min(`fps`, the video's own fps) (frames picked by timestamp; never
upsampled), each scaled to cover `height` x `width` and centre-cropped. A video shorter than
one clip is padded with its last frame (`short_clips="pad"`) or skipped ("skip").

Building runs in two phases: every video is decoded and processed completely first (into a
temporary cache of .npy files, never a half example), and only then are the splits written.
Unreadable or corrupt files are skipped, counted and listed in `build_report.json` in the
dataset's output directory, with a log line; one bad file never stops the build.

Features: video uint8 [T, H, W, 3], caption (text), fps (float32), source (text: the file's
name), clip_index (int32), start_time (float32 seconds).  Splits: `train`, plus `test` when
`test_fraction` > 0 (a file goes to test when md5(name) / 2^128 < test_fraction).
"""
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import tfds_compat
from vdm_jax.data import video_io

REPORT_FILE = "build_report.json"


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Which directory and how to cut it. Build one with `make_config`."""
  video_dir: str = ""
  frames: int = 16
  height: int = 32
  width: int = 32
  fps: float = 8.0
  default_fps: float = 8.0
  clips_per_video: int = 1
  short_clips: str = "pad"
  test_fraction: float = 0.0
  require_captions: bool = True


def make_config(*, video_dir, frames=16, height=32, width=32, fps=8.0, default_fps=8.0,
                clips_per_video=1, short_clips="pad", test_fraction=0.0,
                require_captions=True, check_dir=True) -> VideoFolderConfig:
  """A validated config; its name hashes the parameters and the directory's absolute path."""
  video_dir = os.path.abspath(os.path.expanduser(video_dir)) if video_dir else ""
  if not video_dir or (check_dir and not os.path.isdir(video_dir)):
    raise ValueError(f"data.video_dir={video_dir!r} is not a directory: point it at the folder "
                     "of your videos.")
  if short_clips not in ("pad", "skip"):
    raise ValueError(f"short_clips={short_clips!r} must be 'pad' or 'skip'.")
  if frames < 1 or height < 1 or width < 1 or fps <= 0 or default_fps <= 0:
    raise ValueError(f"Bad clip geometry: frames={frames}, {height}x{width}, fps={fps}, "
                     f"default_fps={default_fps}.")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction} must lie in [0, 1).")
  params = dict(video_dir=video_dir, frames=int(frames), height=int(height), width=int(width),
                fps=float(fps), default_fps=float(default_fps),
                clips_per_video=int(clips_per_video), short_clips=short_clips,
                test_fraction=float(test_fraction), require_captions=bool(require_captions))
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  name = f"{os.path.basename(video_dir) or 'videos'}_f{frames}_r{height}x{width}_{digest}"
  name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
  return VideoFolderConfig(name=name, description=json.dumps(params), **params)


def list_videos(video_dir: str) -> list:
  """Sorted names of the videos (files and frame folders) at the top of `video_dir`."""
  names = []
  for name in sorted(os.listdir(video_dir)):
    path = os.path.join(video_dir, name)
    if os.path.isdir(path):
      if any(n.lower().endswith(video_io.IMAGE_EXTENSIONS) for n in os.listdir(path)):
        names.append(name)
    elif name.lower().endswith(video_io.VIDEO_EXTENSIONS):
      names.append(name)
  return names


def read_captions(video_dir: str, names) -> dict:
  """name -> caption from sidecar .txt files, captions.jsonl and captions.csv."""
  mapping = {}
  jsonl = os.path.join(video_dir, "captions.jsonl")
  if os.path.exists(jsonl):
    with open(jsonl, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        if line.strip():
          try:
            row = json.loads(line)
            mapping[str(row["file"])] = str(row["caption"])
          except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{jsonl}:{line_no}: expected {{\"file\": ..., \"caption\": ...}}"
                             f" ({e}).") from e
  csv_path = os.path.join(video_dir, "captions.csv")
  if os.path.exists(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
        raise ValueError(f"{csv_path} needs a header row with columns 'file' and 'caption'.")
      for row in reader:
        mapping[row["file"]] = row["caption"]
  out = {}
  for name in names:
    is_dir = os.path.isdir(os.path.join(video_dir, name))
    stem = name if is_dir else os.path.splitext(name)[0]
    sidecar = os.path.join(video_dir, stem + ".txt")
    if os.path.exists(sidecar):
      with open(sidecar, encoding="utf-8") as f:
        out[name] = f.read().strip()
    elif name in mapping:
      out[name] = mapping[name].strip()
  return out


def split_of(name: str, test_fraction: float) -> str:
  u = int(hashlib.md5(name.encode()).hexdigest(), 16) / 2.0 ** 128
  return "test" if u < test_fraction else "train"


def cut_clips(frames, times, cfg: VideoFolderConfig):
  """Cuts decoded frames into clips: list of (uint8 [T, H, W, 3], fps, start_time).

  Returns [] for a video shorter than one clip when cfg.short_clips == "skip".
  """
  src_fps = video_io.source_fps(times, cfg.default_fps)
  fps = min(cfg.fps, src_fps)
  duration = float(times[-1]) + 1.0 / src_fps  # the last frame shows for one frame period
  starts = video_io.clip_starts(duration, clip_seconds=cfg.frames / fps,
                                max_clips=cfg.clips_per_video)
  if not starts:
    if cfg.short_clips == "skip":
      return []
    starts = [0.0]  # pick_frames repeats the last frame past the end
  clips = []
  for start in starts:
    idx = video_io.pick_frames(times, fps=fps, num_frames=cfg.frames, start=start)
    clip = video_io.resize_and_crop(frames[idx], cfg.height, cfg.width)
    clips.append((clip, fps, start))
  return clips


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """The user's own captioned videos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  code_path = tfds_compat.code_path

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.report = None
    self._cache_dir = None

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    features = tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(cfg.frames, cfg.height, cfg.width, 3),
                                      dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "caption": tfds.features.Text(),
        "fps": tfds.features.Scalar(dtype=np.float32),
        "source": tfds.features.Text(),
        "clip_index": tfds.features.Scalar(dtype=np.int32),
        "start_time": tfds.features.Scalar(dtype=np.float32),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features)

  def _decode_all(self):
    """Phase 1: decodes and cuts every video into the cache. Returns split -> entries."""
    cfg = self.builder_config
    names = list_videos(cfg.video_dir)
    captions = read_captions(cfg.video_dir, names)
    report = {"video_dir": cfg.video_dir, "num_files": len(names), "failed": [],
              "uncaptioned": [], "too_short": [], "num_clips": {}}
    entries = {"train": [], "test": []}
    for n, name in enumerate(names):
      print(f"video_folder: [{n + 1}/{len(names)}] {name}", flush=True)
      caption = captions.get(name)
      if caption is None and cfg.require_captions:
        report["uncaptioned"].append(name)
        continue
      try:
        frames, times = video_io.read_video(
            os.path.join(cfg.video_dir, name), default_fps=cfg.default_fps,
            target_fps=cfg.fps, max_output_frames=(cfg.clips_per_video * cfg.frames or None))
        clips = cut_clips(frames, times, cfg)
      except video_io.VideoReadError as e:
        report["failed"].append({"file": name, "reason": str(e)[:500]})
        logging.warning("video_folder: skipping unreadable %s: %s", name, e)
        continue
      if not clips:
        report["too_short"].append(name)
        continue
      for k, (clip, fps, start) in enumerate(clips):
        path = os.path.join(self._cache_dir, f"{n:07d}_{k:05d}.npy")
        np.save(path, clip, allow_pickle=False)
        entries[split_of(name, cfg.test_fraction)].append(
            dict(path=path, key=f"{name}#{k}", caption=caption or "", fps=fps, source=name,
                 clip_index=k, start_time=start))
    report["num_clips"] = {s: len(e) for s, e in entries.items()}
    report["num_skipped"] = sum(len(report[k]) for k in ("failed", "uncaptioned", "too_short"))
    self.report = report
    if not entries["train"]:
      raise ValueError(f"No usable video in {cfg.video_dir}: {report['num_skipped']} skipped "
                       f"(failed: {len(report['failed'])}, uncaptioned: "
                       f"{len(report['uncaptioned'])}, too short: {len(report['too_short'])}).")
    return entries

  def _download_and_prepare(self, dl_manager, download_config):
    self._cache_dir = tempfile.mkdtemp(prefix="decode_cache_", dir=self.data_dir)
    try:
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    finally:
      shutil.rmtree(self._cache_dir, ignore_errors=True)
    with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:  # data_dir: the tmp dir
      json.dump(self.report, f, indent=2)
    r = self.report
    message = (f"video_folder: {r['num_files']} files -> {r['num_clips']} clips; skipped "
               f"{r['num_skipped']} (failed {len(r['failed'])}, uncaptioned "
               f"{len(r['uncaptioned'])}, too short {len(r['too_short'])}); see {REPORT_FILE}")
    logging.info(message)
    print(message, flush=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    entries = self._decode_all()
    return {split: self._generate_examples(e) for split, e in entries.items() if e}

  def _generate_examples(self, entries):
    for e in entries:
      yield e["key"], {
          "video": np.load(e["path"], allow_pickle=False), "caption": e["caption"],
          "fps": np.float32(e["fps"]), "source": e["source"],
          "clip_index": np.int32(e["clip_index"]), "start_time": np.float32(e["start_time"])}


def load_report(builder: VideoFolder) -> dict:
  """The build report of a prepared `video_folder` dataset."""
  with open(os.path.join(builder.data_dir, REPORT_FILE)) as f:
    return json.load(f)
