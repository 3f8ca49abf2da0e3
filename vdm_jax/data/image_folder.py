"""tfds builder `image_folder`: a directory of the user's captioned images, as array_record.

The text-image pairs of Make-A-Video's text-to-image stage (or of any image-only training): the
pipeline tiles each image over a clip's frames (is_image True, fps 0; `pipeline.MakeRows`).

What the directory holds (top level only; sub-folders are not searched):
  * image files: .png .jpg .jpeg .bmp .webp .gif .tif .tiff (decoded by Pillow; of an animated
    gif or webp, the first frame);
  * captions, as for `video_folder` (`video_folder.read_captions`): a sidecar `<name>.txt` next
    to `<name>.png`, else a line in `captions.jsonl` (`{"file": "a.png", "caption": "..."}`) or
    a row of `captions.csv` (header `file,caption`). Sidecars win over the mapping files.

Each image is converted to RGB (grayscale and palette images expanded, an alpha channel
dropped: listed as "converted" in the report, never skipped), scaled to cover `height` x
`width` and centre-cropped (`video_io.resize_and_crop`).

Building runs in two phases like `video_folder`: every image is decoded first (into a temporary
cache of .npy files), and only then are the splits written. Bad files are skipped, counted and
listed in `build_report.json` in the dataset's output directory, with a warning naming each;
one bad file never stops the build. Skipped: empty, corrupt, truncated or undecodable files,
broken or looping symlinks and entries named like images that are not regular files
("failed", with the reason); images without a caption or with an empty one ("uncaptioned").
A missing `image_dir` raises `ImageDirError`, and a folder with nothing usable
`NoUsableImagesError`, each saying what to do.

Features: image uint8 [H, W, 3], caption (text), fps (float32, always 0: an image, as in
`moving_shapes_images`), source (text: the file's name). Splits: `train`, plus `test` when
`test_fraction` > 0 (a file goes to test when md5(name) / 2^128 < test_fraction, as in
`video_folder`).
"""
import dataclasses
import hashlib
import json
import math
import os
import stat

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from vdm_jax import errors
from vdm_jax.data import tfds_compat
from vdm_jax.data import video_folder
from vdm_jax.data import video_io

IMAGE_FILE_EXTENSIONS = video_io.IMAGE_EXTENSIONS + (".gif", ".tif", ".tiff")
REPORT_FILE = video_folder.REPORT_FILE
SKIP_KINDS = ("failed", "uncaptioned")  # report lists of skipped images
load_report = video_folder.load_report  # the build report of a prepared dataset


class ImageDirError(errors.UserError, FileNotFoundError, ValueError):
  """data.image_dir does not exist, is not a directory or cannot be listed."""


class NoUsableImagesError(errors.UserError, ValueError):
  """Every image of the folder was skipped (or it holds no image at all)."""


def _dir_error(image_dir, reason=None):
  if reason is None:
    reason = "does not exist" if not os.path.lexists(image_dir) else "is not a directory"
  return ImageDirError(f"data.image_dir={image_dir!r} {reason}: point it at the folder of your "
                       "captioned images.")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Which directory and the stored size. Build one with `make_config`."""
  image_dir: str = ""
  height: int = 32
  width: int = 32
  test_fraction: float = 0.0


def make_config(*, image_dir, height=32, width=32, test_fraction=0.0,
                check_dir=True) -> ImageFolderConfig:
  """A validated config; its name hashes the parameters and the directory's absolute path."""
  image_dir = os.path.abspath(os.path.expanduser(image_dir)) if image_dir else ""
  if not image_dir:
    raise errors.ConfigError("data.image_dir is not set: point it at the folder of your "
                             "captioned images.")
  if check_dir and not os.path.isdir(image_dir):
    raise _dir_error(image_dir)
  if height < 1 or width < 1:
    raise errors.ConfigError(f"Bad image size {height}x{width}: data.source_resolution must be "
                             "positive.")
  if not 0.0 <= test_fraction < 1.0:
    raise errors.ConfigError(f"data.image_test_fraction={test_fraction} must lie in [0, 1).")
  params = dict(image_dir=image_dir, height=int(height), width=int(width),
                test_fraction=float(test_fraction))
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  name = f"{os.path.basename(image_dir) or 'images'}_r{height}x{width}_{digest}"
  name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
  return ImageFolderConfig(name=name, description=json.dumps(params), **params)


def scan_image_dir(image_dir: str) -> tuple:
  """(names, skipped): the image files at the top of `image_dir`, sorted, and the entries named
  like images that cannot be read, as [{"file", "reason"}].

  Never follows a link into a loop or reads a non-regular file: a broken or looping symlink, a
  folder, FIFO or device named like an image is skipped with its reason.

  Raises:
    ImageDirError: `image_dir` is missing, not a directory or cannot be listed.
  """
  try:
    entries = sorted(os.listdir(image_dir))
  except (FileNotFoundError, NotADirectoryError) as e:
    raise _dir_error(image_dir) from e
  except OSError as e:
    raise _dir_error(image_dir, f"cannot be listed ({e.strerror or e})") from e
  names, skipped = [], []
  for name in entries:
    if not name.lower().endswith(IMAGE_FILE_EXTENSIONS):
      continue
    path = os.path.join(image_dir, name)
    try:
      mode = os.stat(path).st_mode  # follows links: ELOOP / ENOENT for looping / broken ones
    except OSError as e:
      kind = "a broken or looping symlink" if os.path.islink(path) else "unreadable"
      skipped.append({"file": name, "reason": f"{kind} ({e.strerror or e})"})
      continue
    if stat.S_ISREG(mode):
      names.append(name)
    else:
      what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
      skipped.append({"file": name, "reason": f"not a regular file ({what})"})
  return names, skipped


def read_image(path: str, height: int, width: int) -> tuple:
  """(image uint8 [height, width, 3], the file's Pillow mode): the first frame, as RGB, scaled
  to cover height x width and centre-cropped.

  Raises:
    video_io.VideoReadError: the file is empty, truncated, corrupt or not an image Pillow reads.
  """
  if os.path.getsize(path) == 0:
    raise video_io.VideoReadError("empty file (0 bytes)")
  try:
    with Image.open(path) as im:
      im.seek(0)  # an animated gif / webp: its first frame
      mode = im.mode
      w, h = im.size
      scale = max(height / h, width / w)
      if scale < 1.0:  # JPEG: decode at a reduced scale that still covers height x width
        im.draft("RGB", (max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))))
      pixels = np.asarray(im.convert("RGB"))
  except Exception as e:  # any decoder failure: corrupt, truncated, unsupported, too large
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise video_io.VideoReadError(f"{type(e).__name__}: {lines[0] if lines else ''}") from e
  return video_io.resize_and_crop(pixels[None], height, width)[0], mode


class ImageFolder(video_folder.CachedDecodeBuilder):
  """The user's own captioned images."""

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
        "image": tfds.features.Tensor(shape=(cfg.height, cfg.width, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "caption": tfds.features.Text(),
        "fps": tfds.features.Scalar(dtype=np.float32),
        "source": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features)

  def decode_all(self):
    """Phase 1: decodes every captioned image into the cache. Returns split -> entries."""
    cfg = self.builder_config
    names, unreadable = scan_image_dir(cfg.image_dir)
    captions = video_folder.read_captions(cfg.image_dir, names)
    report = {"image_dir": cfg.image_dir, "num_files": len(names) + len(unreadable),
              "failed": list(unreadable), "uncaptioned": [], "converted": [], "num_images": {}}
    for bad in unreadable:
      logging.warning("image_folder: skipping %s: %s", bad["file"], bad["reason"])
    entries = {"train": [], "test": []}
    for n, name in enumerate(names):
      if n % 100 == 0 or n + 1 == len(names):
        print(f"image_folder: [{n + 1}/{len(names)}] {name}", flush=True)
      caption = captions.get(name)
      if not caption:  # none, or an empty caption file / entry
        report["uncaptioned"].append(name)
        logging.warning("image_folder: skipping %s: %s", name,
                        "its caption is empty" if caption == "" else
                        "no caption (a sidecar .txt, captions.jsonl or captions.csv entry)")
        continue
      try:
        image, mode = read_image(os.path.join(cfg.image_dir, name), cfg.height, cfg.width)
      except video_io.VideoReadError as e:
        report["failed"].append({"file": name, "reason": str(e)[:500]})
        logging.warning("image_folder: skipping unreadable %s: %s", name, e)
        continue
      if mode != "RGB":
        report["converted"].append({"file": name, "mode": mode})
      path = os.path.join(self.cache_dir, f"{n:07d}.npy")
      np.save(path, image, allow_pickle=False)
      entries[video_folder.split_of(name, cfg.test_fraction)].append(
          dict(path=path, key=name, caption=caption, source=name))
    report["num_images"] = {s: len(e) for s, e in entries.items()}
    report["num_skipped"] = sum(len(report[k]) for k in SKIP_KINDS)
    self.report = report
    if not entries["train"]:
      raise NoUsableImagesError(_nothing_usable(report, entries, cfg))
    return entries

  def summary_line(self) -> str:
    return summary(self.report)

  def example(self, entry: dict) -> dict:
    return {"image": np.load(entry["path"], allow_pickle=False), "caption": entry["caption"],
            "fps": np.float32(0.0), "source": entry["source"]}


def _fixes(report) -> list:
  """What to do about each kind of skipped image, with up to three names of each."""
  fixes = []
  if report["failed"]:
    shown = "; ".join(f"{f['file']}: {f['reason'][:120]}" for f in report["failed"][:3])
    fixes.append(f"{len(report['failed'])} unreadable ({shown}): re-save or remove them")
  if report["uncaptioned"]:
    fixes.append(f"{len(report['uncaptioned'])} without a caption "
                 f"({', '.join(report['uncaptioned'][:3])}): add a sidecar <name>.txt or a "
                 "captions.jsonl / captions.csv entry")
  return fixes


def summary(report: dict) -> str:
  """One line saying what a build kept, skipped (by kind, with the fix) and converted."""
  r = report
  converted = f"; {len(r['converted'])} converted to RGB" if r.get("converted") else ""
  fixes = _fixes(r)
  return (f"image_folder: {r['num_files']} files -> {r['num_images']} images; skipped "
          f"{r['num_skipped']} (failed {len(r['failed'])}, uncaptioned "
          f"{len(r['uncaptioned'])}){converted}; see {REPORT_FILE}"
          + (". To fix: " + "; ".join(fixes) + "." if fixes else ""))


def _nothing_usable(report, entries, cfg) -> str:
  """The message of NoUsableImagesError: what was found, why each kind was skipped, the fix."""
  where = cfg.image_dir
  if not report["num_files"]:
    return (f"No image in data.image_dir={where!r}: it holds no "
            f"{'/'.join(IMAGE_FILE_EXTENSIONS)} file at its top level (sub-folders are not "
            "searched). Put the images there.")
  if entries["test"]:
    return (f"All {len(entries['test'])} usable images of {where!r} fell in the test split "
            f"(data.image_test_fraction={cfg.test_fraction}): lower it or add images.")
  return (f"No usable image in data.image_dir={where!r}: all {report['num_files']} skipped, "
          + "; ".join(_fixes(report)) + ".")
