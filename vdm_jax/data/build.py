"""Building and opening the dataset that an experiment config names.

`build_dataset(config)` is what `python -m vdm_jax.main --mode=build_data --config=...` runs:
it builds `config.data.name` (moving_shapes | moving_shapes_images | video_folder |
image_folder) into `config.data.data_dir` as array_record files, printing progress.
`make_builder(config)` opens the same build for reading (`builder.as_data_source()`), and
`load_split_examples` returns raw decoded clips, captions and labels (the FVD reference set,
galleries).
`validate_data_config(config)` lists the errors of the `data` section (for
`config_utils.validate_config`).
"""
from typing import List, Optional

import numpy as np

from vdm_jax.data.moving_shapes import grammar

DATASETS = ("moving_shapes", "moving_shapes_images", "video_folder", "image_folder")
SHORT_CLIPS = ("pad", "skip")                        # data.video_short_clips (video_folder)
IMAGE_SOURCES = ("frames", "moving_shapes_images")   # data.image_source (joint training)
CAPTION_MODES = ("use", "ignore")                    # data.captions


def ignores_captions(config) -> bool:
  """True when `data.captions='ignore'`: every clip trains with the null condition (a
  video_folder then needs no captions)."""
  return config.data.get("captions", "use") == "ignore"


def validate_data_config(config) -> List[str]:
  """The errors of an experiment config's `data` section: unknown choices, a vocabulary that
  names words outside the moving-shapes grammar."""
  d = config.data
  errors = []
  for key, choices in (("name", DATASETS), ("video_short_clips", SHORT_CLIPS),
                       ("image_source", IMAGE_SOURCES), ("captions", CAPTION_MODES)):
    value = d.get(key)
    if value is not None and value not in choices:
      errors.append(f"data.{key}={value!r} is not one of {choices}")
  if d.get("name") == "image_folder" and not d.get("image_dir", ""):
    errors.append("data.name='image_folder' needs data.image_dir: set it to the folder of your "
                  "captioned images (captions in sidecar <name>.txt files, captions.jsonl or "
                  "captions.csv; optional: data.image_test_fraction)")
  fraction = d.get("image_test_fraction", 0.0)
  if not 0.0 <= fraction < 1.0:
    errors.append(f"data.image_test_fraction={fraction} must lie in [0, 1)")
  vocabulary = d.get("vocabulary", None)
  if vocabulary is not None and str(d.get("name", "")).startswith("moving_shapes"):
    try:
      grammar.check_vocabulary(dict(vocabulary.items()))
    except ValueError as e:
      errors.append(f"data.vocabulary: {e}")
  return errors


def builder_config(config, *, check_video_dir: bool = True):
  """The tfds BuilderConfig for `config.data` (an experiment config, see configs/default.py).

  `check_video_dir=False` lets a built video_folder (or image_folder) dataset be read after
  its source directory is gone.
  """
  d = config.data
  if d.name not in DATASETS:
    raise ValueError(f"data.name={d.name!r} is not one of {DATASETS}.")
  res = int(d.source_resolution)
  if d.name == "video_folder":
    from vdm_jax.data import video_folder  # pylint: disable=g-import-not-at-top
    return video_folder.make_config(
        video_dir=d.video_dir, frames=d.source_frames, height=res, width=res,
        fps=d.source_fps, default_fps=d.video_default_fps,
        clips_per_video=d.video_clips_per_video, short_clips=d.video_short_clips,
        test_fraction=d.video_test_fraction, require_captions=not ignores_captions(config),
        check_dir=check_video_dir)
  if d.name == "image_folder":
    from vdm_jax.data import image_folder  # pylint: disable=g-import-not-at-top
    return image_folder.make_config(
        image_dir=d.get("image_dir", ""), height=res, width=res,
        test_fraction=d.get("image_test_fraction", 0.0), check_dir=check_video_dir)
  from vdm_jax.data.moving_shapes import builder  # pylint: disable=g-import-not-at-top
  return builder.make_config(
      frames=d.source_frames, height=res, width=res, fps=d.source_fps,
      num_train=d.num_train_examples, num_test=d.num_eval_examples, seed=d.build_seed,
      held_out=tuple(d.held_out), test_held_out_fraction=d.test_held_out_fraction,
      two_object_prob=d.two_object_prob,
      vocabulary=dict(d.get("vocabulary", {}).items()))


def builder_class(name: str):
  """The tfds builder class of dataset `name`."""
  if name == "video_folder":
    from vdm_jax.data import video_folder  # pylint: disable=g-import-not-at-top
    return video_folder.VideoFolder
  if name == "image_folder":
    from vdm_jax.data import image_folder  # pylint: disable=g-import-not-at-top
    return image_folder.ImageFolder
  from vdm_jax.data.moving_shapes import builder  # pylint: disable=g-import-not-at-top
  if name == "moving_shapes":
    return builder.MovingShapes
  if name == "moving_shapes_images":
    return builder.MovingShapesImages
  raise ValueError(f"Unknown dataset {name!r}; expected one of {DATASETS}.")


def make_builder(config, *, name: Optional[str] = None, for_reading: bool = True):
  """The tfds builder of `config.data` (or of dataset `name` with the same geometry).

  With `for_reading`, checks that it has been built and says how to build it if not.
  """
  name = name or config.data.name
  if name != config.data.name:
    config = config.copy_and_resolve_references()
    config.data.name = name
  cfg = builder_config(config, check_video_dir=not for_reading)
  builder = builder_class(name)(config=cfg, data_dir=config.data.data_dir)
  if for_reading and not builder.is_prepared():
    raise FileNotFoundError(
        f"Dataset {name} ({cfg.name}) is not built in {config.data.data_dir!r}. Build it with "
        f"`python -m vdm_jax.main --mode=build_data --config=<this config>` (same data.* "
        "settings).")
  return builder


def build_dataset(config):
  """Builds the dataset `config.data` names into `config.data.data_dir`; returns the builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = make_builder(config, for_reading=False)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if config.data.rebuild
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  print(f"build_data: {config.data.name} [{builder.builder_config.name}] -> {builder.data_dir}",
        flush=True)
  if builder.is_prepared() and not config.data.rebuild:
    print("build_data: already built (set data.rebuild=True to overwrite).", flush=True)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  for split, info in builder.info.splits.items():
    print(f"build_data: split {split}: {info.num_examples} examples", flush=True)
  return builder


def decode_text(value) -> str:
  """A stored text feature (bytes from an array_record source, or str) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_split_examples(config, split: str, n: int, *, name: Optional[str] = None) -> dict:
  """The first `n` examples of `split`, decoded (raw: at the stored size and frame rate).

  Returns a dict with 'video' uint8 [n, T, H, W, 3] (images: T = 1), 'caption' list[str],
  'fps' float32 [n], 'is_image' bool [n] and 'labels': a dict of [n] arrays for every other
  scalar feature (the procedural labels, held_out, ...; for a video or image folder only its
  source information). Fewer than `n` when the split is smaller.
  """
  builder = make_builder(config, name=name)
  sources = builder.as_data_source()
  if split not in sources:
    raise ValueError(f"Split {split!r} not in {config.data.name}: has {sorted(sources)}.")
  source = sources[split]
  records = [source[i] for i in range(min(n, len(source)))]
  if not records:
    raise ValueError(f"Split {split!r} of {config.data.name} is empty.")
  is_image = "image" in records[0]
  video = np.stack([r["image"][None] if is_image else r["video"] for r in records])
  skip = {"video", "image", "caption", "fps"}
  labels = {}
  for key in sorted(records[0]):
    if key not in skip:
      values = [r[key] for r in records]
      labels[key] = (np.array([decode_text(v) for v in values]) if isinstance(values[0], bytes)
                     else np.asarray(values))
  return {"video": video, "caption": [decode_text(r["caption"]) for r in records],
          "fps": np.asarray([r["fps"] for r in records], np.float32),
          "is_image": np.full((len(records),), is_image), "labels": labels}
