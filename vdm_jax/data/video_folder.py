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
dataset's output directory, with a warning naming each; one bad file never stops the build.
Skipped: empty (0-byte) files, files without a video stream (audio named .mp4), undecodable
ones, broken or looping symlinks, links back to the folder itself and entries that are not
regular files ("failed", with the reason); videos without a caption or with an empty one
("uncaptioned", when `require_captions`); videos shorter than a clip with short_clips="skip"
("too_short"). Decoding has bounded memory (`video_io.decode_video`): a huge frame size is
decoded scaled down ("resized" in the report) and a video whose decoded frames would pass
`video_io.MAX_DECODE_BYTES` is read up to there ("cut_short"). A missing `video_dir` raises
`VideoDirError`, and a folder with nothing usable `NoUsableVideosError`, each saying what to do.

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
import stat
import tempfile

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vdm_jax import errors
from vdm_jax.data import tfds_compat
from vdm_jax.data import video_io

REPORT_FILE = "build_report.json"
SKIP_KINDS = ("failed", "uncaptioned", "too_short")  # report lists of skipped videos


class VideoDirError(errors.UserError, FileNotFoundError, ValueError):
  """data.video_dir does not exist, is not a directory or cannot be listed."""


class NoUsableVideosError(errors.UserError, ValueError):
  """Every entry of the video folder was skipped (or it holds no video at all)."""


def _dir_error(video_dir, reason=None):
  if reason is None:
    reason = "does not exist" if not os.path.lexists(video_dir) else "is not a directory"
  return VideoDirError(f"data.video_dir={video_dir!r} {reason}: point it at the folder of your "
                       "videos.")


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
  if not video_dir:
    raise errors.ConfigError("data.video_dir is not set: point it at the folder of your videos.")
  if check_dir and not os.path.isdir(video_dir):
    raise _dir_error(video_dir)
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


def scan_video_dir(video_dir: str) -> tuple:
  """(names, skipped): the videos (files and frame folders) at the top of `video_dir`, sorted,
  and the entries that look like videos but cannot be read, as [{"file", "reason"}].

  Never follows a link into a loop or reads a non-regular file: a broken or looping symlink,
  a link to the folder itself or to a folder above it, a FIFO or device named like a video, or
  a sub-folder that cannot be listed is skipped with its reason. Sub-folders are not searched
  (a frame folder's images are its direct entries).

  Raises:
    VideoDirError: `video_dir` is missing, not a directory or cannot be listed.
  """
  try:
    entries = sorted(os.listdir(video_dir))
  except (FileNotFoundError, NotADirectoryError) as e:
    raise _dir_error(video_dir) from e
  except OSError as e:
    raise _dir_error(video_dir, f"cannot be listed ({e.strerror or e})") from e
  root = os.path.realpath(video_dir)
  names, skipped = [], []
  for name in entries:
    path = os.path.join(video_dir, name)
    looks_like_video = (name.lower().endswith(video_io.VIDEO_EXTENSIONS)
                        or not os.path.splitext(name)[1])
    try:
      mode = os.stat(path).st_mode  # follows links: ELOOP / ENOENT for looping / broken ones
    except OSError as e:
      if looks_like_video or os.path.islink(path):
        kind = "a broken or looping symlink" if os.path.islink(path) else "unreadable"
        skipped.append({"file": name, "reason": f"{kind} ({e.strerror or e})"})
      continue
    if stat.S_ISDIR(mode):
      real = os.path.realpath(path)
      if real == root or root.startswith(real.rstrip(os.sep) + os.sep):
        skipped.append({"file": name, "reason": f"symlink loop: it leads to {real}, which holds "
                                                "the video folder"})
        continue
      try:
        listing = os.listdir(path)
      except OSError as e:
        skipped.append({"file": name, "reason": f"folder cannot be listed ({e.strerror or e})"})
        continue
      if any(n.lower().endswith(video_io.IMAGE_EXTENSIONS) for n in listing):
        names.append(name)
    elif name.lower().endswith(video_io.VIDEO_EXTENSIONS):
      if stat.S_ISREG(mode):
        names.append(name)
      else:
        skipped.append({"file": name, "reason": "not a regular file (a FIFO, socket or device)"})
  return names, skipped


def list_videos(video_dir: str) -> list:
  """Sorted names of the videos (files and frame folders) at the top of `video_dir`."""
  return scan_video_dir(video_dir)[0]


def _read_text(path, what):
  """The text of `path`, or None (with a warning naming it) if it cannot be read."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    logging.warning("video_folder: ignoring %s %s: %s", what, path, e)
    return None


def read_captions(video_dir: str, names) -> dict:
  """name -> caption from sidecar .txt files, captions.jsonl and captions.csv."""
  mapping = {}
  for listing in ("captions.jsonl", "captions.csv"):
    path = os.path.join(video_dir, listing)
    if os.path.lexists(path) and not os.path.exists(path):
      logging.warning("video_folder: ignoring %s: a broken or looping symlink.", path)
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
    text = _read_text(sidecar, "caption file") if os.path.lexists(sidecar) else None
    if text is not None:
      out[name] = text.strip()
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


class CachedDecodeBuilder(tfds.core.GeneratorBasedBuilder):
  """The build of a folder of the user's files: `decode_all()` decodes every usable file into
  .npy files of a temporary cache (filling `self.report`) and returns the entries per split;
  the examples are read back from the cache; the report is written beside the build and its
  `summary_line` printed. Subclasses: VideoFolder, image_folder.ImageFolder."""

  def decode_all(self) -> dict:
    raise NotImplementedError

  def summary_line(self) -> str:
    raise NotImplementedError

  def example(self, entry: dict) -> dict:
    raise NotImplementedError

  def _download_and_prepare(self, dl_manager, download_config):
    self.cache_dir = tempfile.mkdtemp(prefix="decode_cache_", dir=self.data_dir)
    try:
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    finally:
      shutil.rmtree(self.cache_dir, ignore_errors=True)
    with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:  # data_dir: the tmp dir
      json.dump(self.report, f, indent=2)
    message = self.summary_line()
    (logging.warning if self.report["num_skipped"] else logging.info)(message)
    print(message, flush=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    entries = self.decode_all()
    return {split: self._generate_examples(e) for split, e in entries.items() if e}

  def _generate_examples(self, entries):
    for e in entries:
      yield e["key"], self.example(e)


class VideoFolder(CachedDecodeBuilder):
  """The user's own captioned videos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  code_path = tfds_compat.code_path

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.report = None
    self.cache_dir = None

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

  def decode_all(self):
    """Phase 1: decodes and cuts every video into the cache. Returns split -> entries."""
    cfg = self.builder_config
    names, unreadable = scan_video_dir(cfg.video_dir)
    captions = read_captions(cfg.video_dir, names)
    report = {"video_dir": cfg.video_dir, "num_files": len(names) + len(unreadable),
              "failed": list(unreadable), "uncaptioned": [], "too_short": [], "resized": [],
              "cut_short": [], "num_clips": {}}
    for bad in unreadable:
      logging.warning("video_folder: skipping %s: %s", bad["file"], bad["reason"])
    entries = {"train": [], "test": []}
    for n, name in enumerate(names):
      print(f"video_folder: [{n + 1}/{len(names)}] {name}", flush=True)
      caption = captions.get(name)
      if not caption and cfg.require_captions:  # none, or an empty caption file / entry
        report["uncaptioned"].append(name)
        logging.warning("video_folder: skipping %s: %s", name,
                        "its caption is empty" if caption == "" else
                        "no caption (a sidecar .txt, captions.jsonl or captions.csv entry)")
        continue
      try:
        frames, times, notes = video_io.decode_video(
            os.path.join(cfg.video_dir, name), default_fps=cfg.default_fps,
            target_fps=cfg.fps, max_output_frames=(cfg.clips_per_video * cfg.frames or None),
            min_size=(cfg.height, cfg.width))
        clips = cut_clips(frames, times, cfg)
      except video_io.VideoReadError as e:
        report["failed"].append({"file": name, "reason": str(e)[:500]})
        logging.warning("video_folder: skipping unreadable %s: %s", name, e)
        continue
      del frames
      if notes.resized:
        report["resized"].append({"file": name, "from": list(notes.source_size),
                                  "to": list(notes.decoded_size)})
        logging.warning("video_folder: %s is %dx%d: decoded at %dx%d to bound memory.", name,
                        *notes.source_size, *notes.decoded_size)
      if notes.cut_at_seconds is not None:
        report["cut_short"].append({"file": name, "seconds": round(notes.cut_at_seconds, 3)})
        logging.warning("video_folder: %s: only its first %.2f s are used: more decoded frames "
                        "would pass video_io.MAX_DECODE_BYTES=%d.", name, notes.cut_at_seconds,
                        video_io.MAX_DECODE_BYTES)
      if not clips:
        report["too_short"].append(name)
        logging.warning("video_folder: skipping %s: shorter than one clip (short_clips='skip').",
                        name)
        continue
      for k, (clip, fps, start) in enumerate(clips):
        path = os.path.join(self.cache_dir, f"{n:07d}_{k:05d}.npy")
        np.save(path, clip, allow_pickle=False)
        entries[split_of(name, cfg.test_fraction)].append(
            dict(path=path, key=f"{name}#{k}", caption=caption or "", fps=fps, source=name,
                 clip_index=k, start_time=start))
    report["num_clips"] = {s: len(e) for s, e in entries.items()}
    report["num_skipped"] = sum(len(report[k]) for k in SKIP_KINDS)
    self.report = report
    if not entries["train"]:
      raise NoUsableVideosError(_nothing_usable(report, entries, cfg))
    return entries

  def summary_line(self) -> str:
    return summary(self.report)

  def example(self, entry: dict) -> dict:
    e = entry
    return {"video": np.load(e["path"], allow_pickle=False), "caption": e["caption"],
            "fps": np.float32(e["fps"]), "source": e["source"],
            "clip_index": np.int32(e["clip_index"]), "start_time": np.float32(e["start_time"])}


def summary(report: dict) -> str:
  """One line saying what a build kept, skipped (by kind) and changed."""
  r = report
  changed = "".join(f"; {len(r.get(k, []))} {what}" for k, what in
                    (("resized", "decoded scaled down"), ("cut_short", "read in part"))
                    if r.get(k))
  return (f"video_folder: {r['num_files']} files -> {r['num_clips']} clips; skipped "
          f"{r['num_skipped']} (failed {len(r['failed'])}, uncaptioned "
          f"{len(r['uncaptioned'])}, too short {len(r['too_short'])}){changed}; see "
          f"{REPORT_FILE}")


def _nothing_usable(report, entries, cfg) -> str:
  """The message of NoUsableVideosError: what was found, why each kind was skipped, the fix."""
  where = cfg.video_dir
  if not report["num_files"]:
    return (f"No video in data.video_dir={where!r}: it holds no "
            f"{'/'.join(video_io.VIDEO_EXTENSIONS)} file and no folder of frame images at its "
            "top level (sub-folders are not searched). Put the videos there.")
  if entries["test"]:
    return (f"All {len(entries['test'])} usable clips of {where!r} fell in the test split "
            f"(data.video_test_fraction={cfg.test_fraction}): lower it or add videos.")
  fixes = []
  if report["failed"]:
    shown = "; ".join(f"{f['file']}: {f['reason'][:120]}" for f in report["failed"][:3])
    fixes.append(f"{len(report['failed'])} unreadable ({shown}): re-encode or remove them")
  if report["uncaptioned"]:
    fixes.append(f"{len(report['uncaptioned'])} without a caption "
                 f"({', '.join(report['uncaptioned'][:3])}): add a sidecar <name>.txt or a "
                 "captions.jsonl / captions.csv entry")
  if report["too_short"]:
    fixes.append(f"{len(report['too_short'])} shorter than one clip: use "
                 "data.video_short_clips='pad' or fewer data.source_frames")
  return (f"No usable video in data.video_dir={where!r}: all {report['num_files']} skipped, "
          + "; ".join(fixes) + ".")


def load_report(builder: VideoFolder) -> dict:
  """The build report of a prepared `video_folder` dataset."""
  with open(os.path.join(builder.data_dir, REPORT_FILE)) as f:
    return json.load(f)
