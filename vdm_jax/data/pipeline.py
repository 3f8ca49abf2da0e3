"""grain input pipelines: per-host, deterministic, checkpointable training batches.

`make_train_iterator(config, ...)` reads the tfds build of `config.data` with
`builder.as_data_source()` and returns a `grain.DataLoaderIterator` (`get_state()` -> bytes,
`set_state(bytes)`), yielding per-host numpy batches of b = train.batch_size / process_count
rows:

  video      float32 [b, T, H, W, 3] in [-1, 1]   T, H, W = config.frames, height, width
  fps        float32 [b]    effective frame rate of each clip (source fps / stride); 0 for images
  is_image   bool    [b]    True for image rows
  index      int32   [b]    the source record each row came from (debugging, shard checks)
  text_emb   float32 [b, L, D], text_mask bool [b, L]   when a text_store is given
  lowres     float32 [b, T', H', W', 3] in [-1, 1]   stages "ssr" / "tsr" only

Per record: the host's shard of the split is shuffled globally with `data.shuffle_seed`
(epoch after epoch), the clip is cropped in time at a stride = round(source fps / config.fps)
(smaller if the clip is too short for it) from a random start, and scaled to cover H x W and
centre-cropped. Randomness comes from grain's per-record rng, so a restored iterator repeats
exactly what the uninterrupted one would have produced.

Joint image-video batches (`data.images_per_video` = K > 0, VDM section 4.2): the b rows
above are videos, and each video brings K independent images, packed VDM's way as single
frames: the batch also holds `images/video` [b * K, 1, H, W, 3], `images/fps` (0),
`images/is_image` (True), `images/index`, `images/text_emb`, `images/text_mask` (and
`images/lowres` [b * K, 1, h, w, 3] for an ssr stage), in the video rows' order (the images of
video row r are rows r * K ... r * K + K - 1). An image is a random frame of a random clip of
this host's shard, with the motion-free caption of its clip's labels, or a random image of
`moving_shapes_images` when `data.image_source` says so. The model runs them as one-frame
videos with its temporal layers masked (`is_image`), so an image costs one frame of compute,
not a clip's (`vdm_jax.train.objective.split_joint_batch`). A `moving_shapes_images` dataset
as the main source gives image rows tiled over all T frames (`video[r, t] == video[r, 0]`,
is_image True, fps 0). Temporal SR stages do not take extra images (they learn frame rates).

Captions: every row's text_emb / text_mask is its caption's, looked up in the text store, or
the null condition (zeros, all-False mask: what classifier-free dropout gives) for a clip
without a caption and for every row when `data.captions='ignore'` (motion learned from
unlabeled video, Make-A-Video); the null condition never reaches a caption lookup.

Super-resolution conditioning, made on the fly from the same clip (same uint8 pixels):
  "ssr": lowres = `video_io.resize_frames(clip, data.lowres_height, data.lowres_width)`
         (block average for integer factors), [b, T, h, w, 3];
  "tsr": lowres = clip[:, ::T // data.lowres_frames], [b, data.lowres_frames, H, W, 3]
         (its frame rate is fps / (T // lowres_frames)).

Training crops (fully convolutional stages, Imagen Video): `data.crop_frames`, `crop_height`,
`crop_width` (0 = the full size) cut every row to a random window of the stage geometry AFTER
the lowres video is made: the window starts on a multiple of the lowres factor of each axis
(T // lowres_frames, H // lowres_height, W // lowres_width; 1 for a base stage), so `lowres` is
cut to the matching window [b, crop_frames / ft, crop_height / fh, crop_width / fw, 3] and stays
exactly the lowres video of the cropped clip. The model then samples at the full size.

Latent stages (`data.latents` names a latent dataset, `vdm_jax.data.latents`): every record is
one clip encoded once by a frozen autoencoder (`--mode=build_latents`), and `video` is its
normalized latents float32 [b, T', H', W', C'] (the stage's frames, height, width, channels
must be the latent shape: checked when the split is opened, before anything compiles), with
the clip's fps, is_image False, index and its caption's text_emb / text_mask as above. No crop,
no extra images; the shuffle, sharding and checkpointable state are the pixel pipeline's.
"""
import dataclasses
from typing import Optional

import grain
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from vdm_jax import errors
from vdm_jax.data import build
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.data import latents as latents_lib
from vdm_jax.data import video_io
from vdm_jax.data.moving_shapes import grammar
from vdm_jax.models import conditioning


class IndexedSource:
  """A random-access source whose records carry their own index as `_index`."""

  def __init__(self, source, name: str):
    self._source, self._name = source, name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    record = dict(self._source[int(index)])
    record["_index"] = int(index)
    return record

  def __repr__(self) -> str:  # grain validates checkpoints against this
    return f"IndexedSource({self._name}, {len(self._source)} records)"


@dataclasses.dataclass(frozen=True)
class Geometry:
  """What one training row looks like (validated by `stage_geometry`)."""
  frames: int
  height: int
  width: int
  fps: float
  stage: str
  images_per_video: int
  lowres_frames: int
  lowres_height: int
  lowres_width: int
  crop_frames: int = 0                  # training window; 0 = the full frames/height/width
  crop_height: int = 0
  crop_width: int = 0

  @property
  def factors(self) -> tuple:
    """Integer (time, height, width) factors between the row and its lowres video."""
    return (self.frames // self.lowres_frames, self.height // self.lowres_height,
            self.width // self.lowres_width)

  @property
  def window(self) -> tuple:
    """(frames, height, width) of a training row: the crop, or the full size."""
    return (self.crop_frames or self.frames, self.crop_height or self.height,
            self.crop_width or self.width)

  @property
  def cropped(self) -> bool:
    return self.window != (self.frames, self.height, self.width)


def stage_geometry(config) -> Geometry:
  """Reads and checks the stage geometry from the config; raises ValueError naming the key."""
  d = config.data
  g = Geometry(frames=int(config.frames), height=int(config.height), width=int(config.width),
               fps=float(config.fps), stage=config.stage,
               images_per_video=int(d.images_per_video),
               lowres_frames=int(d.lowres_frames) or int(config.frames),
               lowres_height=int(d.lowres_height) or int(config.height),
               lowres_width=int(d.lowres_width) or int(config.width),
               crop_frames=int(d.get("crop_frames", 0)) or int(config.frames),
               crop_height=int(d.get("crop_height", 0)) or int(config.height),
               crop_width=int(d.get("crop_width", 0)) or int(config.width))
  if g.frames < 1 or g.height < 1 or g.width < 1 or g.fps <= 0:
    raise ValueError(f"frames={g.frames}, height x width={g.height}x{g.width}, fps={g.fps}: "
                     "all must be positive.")
  if g.images_per_video < 0:
    raise ValueError(f"data.images_per_video={g.images_per_video} must be >= 0.")
  if g.images_per_video and g.stage == "tsr":
    raise ValueError(f"data.images_per_video={g.images_per_video} on a temporal SR stage: it "
                     "learns to raise the frame rate, which single images do not show; set "
                     "data.images_per_video=0 for stage='tsr'.")
  if d.name not in ("moving_shapes_images", "image_folder") and g.frames > int(d.source_frames):
    raise ValueError(f"frames={g.frames} exceeds the stored clips' data.source_frames="
                     f"{d.source_frames}; store longer clips or train on fewer frames.")
  if g.stage == "ssr" and not (d.lowres_height and d.lowres_width):
    raise ValueError("stage='ssr' needs data.lowres_height and data.lowres_width (the "
                     "previous stage's size).")
  if g.stage == "ssr" and (g.lowres_height > g.height or g.lowres_width > g.width):
    raise ValueError(f"ssr: data.lowres_{{height,width}}={g.lowres_height}x{g.lowres_width} "
                     f"must not exceed {g.height}x{g.width}.")
  if g.stage == "tsr":
    try:
      conditioning.temporal_factor(g.frames, int(d.lowres_frames))
    except ValueError as e:
      raise ValueError(f"stage='tsr' needs data.lowres_frames (the previous stage's frame "
                       f"count) at a regular stride in frames={g.frames}; got "
                       f"{d.lowres_frames}: {e}.") from e
  _check_crop(g)
  if d.image_source not in ("frames", "moving_shapes_images"):
    raise ValueError(f"data.image_source={d.image_source!r} must be 'frames' or "
                     "'moving_shapes_images'.")
  return g


def _check_crop(g: Geometry) -> None:
  """Raises ValueError naming the data.crop_* key that cannot cut aligned windows."""
  if not g.cropped:
    return
  full, low = (g.frames, g.height, g.width), (g.lowres_frames, g.lowres_height, g.lowres_width)
  for name, c, n, lo in zip(("frames", "height", "width"), g.window, full, low):
    if not 0 < c <= n:
      raise ValueError(f"data.crop_{name}={c} must lie in [1, {name}={n}] (0 = no crop).")
    if n % lo or c % (n // lo):
      raise ValueError(f"data.crop_{name}={c}: a crop needs an integer lowres factor "
                       f"({name}={n} / lowres {lo}) that divides the crop; choose a multiple "
                       f"of {n // lo if n % lo == 0 else 'an integer factor'}.")


def crop_row(row: dict, g: Geometry, rng: np.random.Generator) -> dict:
  """Cuts a row's 'video' [T, H, W, 3] (and 'lowres') to a random window of `g.window`.

  The window starts on multiples of the lowres factors, so the cropped lowres video is the
  lowres video of the cropped clip (block means and frame strides commute with aligned cuts).
  """
  starts, lows = [], []
  for c, n, f in zip(g.window, (g.frames, g.height, g.width), g.factors):
    starts.append(f * int(rng.integers(0, (n - c) // f + 1)))
    lows.append((starts[-1] // f, c // f))
  (t, h, w), (ct, ch, cw) = starts, g.window
  out = dict(row)
  out["video"] = row["video"][t:t + ct, h:h + ch, w:w + cw]
  if "lowres" in row:
    (lt, nt), (lh, nh), (lw, nw) = lows
    out["lowres"] = row["lowres"][lt:lt + nt, lh:lh + nh, lw:lw + nw]
  return out


def image_caption(record) -> str:
  """A caption for a single frame of `record`: motion-free for procedural clips."""
  if "obj0_shape" in record and "video" in record:
    spec = grammar.labels_from_dict(record, fps=1.0, frames=1, height=8, width=8)
    return grammar.caption(spec, with_motion=False)
  return build.decode_text(record["caption"])


def temporal_crop(video, *, source_fps: float, fps: float, frames: int, rng):
  """A random crop of `frames` frames at stride round(source_fps / fps) (shrunk to fit).

  Args: video uint8 [Ts, H, W, 3]. Returns (clip [frames, H, W, 3], effective fps).
  """
  total = video.shape[0]
  stride = max(1, int(round(source_fps / fps))) if source_fps > 0 else 1
  while stride > 1 and (frames - 1) * stride + 1 > total:
    stride -= 1
  span = (frames - 1) * stride + 1
  if span > total:
    raise ValueError(f"A stored clip has {total} frames, fewer than the {frames} required.")
  start = int(rng.integers(0, total - span + 1))
  return video[start:start + span:stride], source_fps / stride


class MakeRows(grain.transforms.RandomMap):
  """record -> the record's clip (or tiled image) row, plus its K single-frame image rows
  [K, 1, ...] under IMAGE_PREFIX keys."""

  def __init__(self, geometry: Geometry, *, text_store=None, image_source=None,
               image_range=(0, 0), ignore_captions=False):
    self.g, self.text_store = geometry, text_store
    self.image_source, self.image_range = image_source, image_range
    self.ignore_captions = ignore_captions

  def random_map(self, record, rng: np.random.Generator):
    row = self._record_row(record, rng)
    if self.g.images_per_video:
      images = [self._extra_image_row(rng) for _ in range(self.g.images_per_video)]
      row.update({IMAGE_PREFIX + k: np.stack([r[k] for r in images]) for k in images[0]})
    return row

  def _record_row(self, record, rng):
    caption = build.decode_text(record["caption"])
    if "image" in record:
      return self._image_row(record["image"], caption, record["_index"], rng)
    clip, fps = temporal_crop(record["video"], source_fps=float(record["fps"]), fps=self.g.fps,
                              frames=self.g.frames, rng=rng)
    return self._row(clip, fps, False, caption, record["_index"], rng)

  def _extra_image_row(self, rng):
    lo, hi = self.image_range
    record = self.image_source[int(rng.integers(lo, hi))]
    if "image" in record:
      image, caption = record["image"], build.decode_text(record["caption"])
    else:   # a random frame of a clip, with the motion-free caption of its labels
      image = record["video"][int(rng.integers(record["video"].shape[0]))]
      caption = image_caption(record)
    return self._row(image[None], 0.0, True, caption, record["_index"], rng, crop_time=False)

  def _image_row(self, image, caption, index, rng):
    """An image as a whole row: tiled over all T frames (image-only datasets)."""
    image = video_io.resize_and_crop(image[None], self.g.height, self.g.width)[0]
    tiled = np.broadcast_to(image[None], (self.g.frames,) + image.shape)
    return self._row(tiled, 0.0, True, caption, index, rng)

  def _row(self, clip, fps, is_image, caption, index, rng, crop_time=True):
    g = self.g
    clip = video_io.resize_and_crop(np.ascontiguousarray(clip), g.height, g.width)
    row = {"video": _to_unit(clip), "fps": np.float32(fps), "is_image": np.bool_(is_image),
           "index": np.int32(index)}
    if g.stage == "ssr":
      row["lowres"] = _to_unit(video_io.resize_frames(clip, g.lowres_height, g.lowres_width))
    elif g.stage == "tsr":
      k = conditioning.temporal_factor(g.frames, g.lowres_frames)
      row["lowres"] = _to_unit(clip[:k * g.lowres_frames:k])
    if g.cropped:
      row = crop_row(row, g if crop_time else dataclasses.replace(
          g, frames=1, lowres_frames=1, crop_frames=1), rng)
    if self.text_store is not None:
      row.update(text_entries(self.text_store, caption, self.ignore_captions))
    return row


def text_entries(store, caption: str, ignore_captions: bool = False) -> dict:
  """A row's text_emb [L, D] / text_mask [L]: the caption's from `store`, or the null condition
  (zeros, all-False mask; no lookup) for an empty caption or with `ignore_captions`."""
  if ignore_captions or not caption:
    return {"text_emb": np.zeros((store.max_length, store.dim), np.float32),
            "text_mask": np.zeros((store.max_length,), bool)}
  emb, mask = store.lookup(caption)
  return {"text_emb": np.asarray(emb, np.float32), "text_mask": np.asarray(mask, bool)}


class LatentRows(grain.transforms.Map):
  """A latent record (`latents.LatentSplit`) -> a row: `video` = its normalized latents
  [T', H', W', C'], its clip's fps, is_image False, its index and its caption's text."""

  def __init__(self, stats: latents_lib.LatentStats, *, text_store=None,
               ignore_captions: bool = False):
    self.stats, self.text_store, self.ignore_captions = stats, text_store, ignore_captions

  def map(self, record):
    row = {"video": np.asarray(self.stats.normalize(record["latents"]), np.float32),
           "fps": np.float32(record["fps"]), "is_image": np.bool_(False),
           "index": np.int32(record["_index"])}
    if self.text_store is not None:
      row.update(text_entries(self.text_store, record["caption"], self.ignore_captions))
    return row


def _to_unit(frames_uint8):
  return frames_uint8.astype(np.float32) / 127.5 - 1.0


class FlattenGroups(grain.transforms.Map):
  """Image rows [n, K, ...] -> [n * K, ...] (the K images of each video, video by video)."""

  def map(self, element):
    return {k: v.reshape((-1,) + v.shape[2:]) if k.startswith(IMAGE_PREFIX) else v
            for k, v in element.items()}


def shard_range(num_records: int, index: int, count: int):
  """The contiguous [lo, hi) index range of shard `index` of `count` (remainder dropped)."""
  per = num_records // count
  return index * per, (index + 1) * per


def make_data_loader(config, *, split: str = "train", text_store=None,
                     process_index: Optional[int] = None, process_count: Optional[int] = None,
                     num_epochs: Optional[int] = None) -> grain.DataLoader:
  """The grain DataLoader behind `make_train_iterator` (num_epochs None = forever)."""
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  batch = int(config.train.batch_size)
  if batch % process_count:
    raise ValueError(f"train.batch_size={batch} must split evenly over {process_count} hosts.")
  if latents_lib.is_latent_config(config):
    return _latent_loader(config, split=split, text_store=text_store, batch=batch,
                          process_index=process_index, process_count=process_count,
                          num_epochs=num_epochs)
  g = stage_geometry(config)
  sources = build.make_builder(config).as_data_source()
  if split not in sources:
    raise ValueError(f"Split {split!r} not built for {config.data.name}; has {sorted(sources)}.")
  source = IndexedSource(sources[split], f"{config.data.name}/{split}")
  shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                      drop_remainder=True)
  if len(source) < process_count:
    raise ValueError(f"{len(source)} records cannot be shared by {process_count} hosts.")
  image_source, image_range = source, shard_range(len(source), process_index, process_count)
  if g.images_per_video and config.data.image_source == "moving_shapes_images":
    images = build.make_builder(config, name="moving_shapes_images").as_data_source()[split]
    image_source = IndexedSource(images, f"moving_shapes_images/{split}")
    image_range = shard_range(len(images), process_index, process_count)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=True, num_epochs=num_epochs,
      seed=int(config.data.shuffle_seed))
  operations = [
      MakeRows(g, text_store=text_store, image_source=image_source, image_range=image_range,
               ignore_captions=build.ignores_captions(config)),
      grain.transforms.Batch(batch_size=batch // process_count, drop_remainder=True),
  ] + ([FlattenGroups()] if g.images_per_video else [])
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=int(config.data.worker_count), shard_options=shard)


def open_latent_split(config, split: str = "train") -> latents_lib.LatentSplit:
  """The latent dataset split of a latent stage (`data.latents`), checked against the stage:
  ConfigError before anything compiles when its frames/height/width/channels or fps are not
  the latents', or when the latents were normalized with other statistics than the
  autoencoder's latent_stats.json."""
  problems = latents_lib.config_errors(config)
  if problems:
    raise errors.ConfigError("Invalid latent stage:\n  - " + "\n  - ".join(problems))
  return latents_lib.read_split(config.data.latents, split)


def _latent_loader(config, *, split, text_store, batch, process_index, process_count,
                   num_epochs) -> grain.DataLoader:
  """`make_data_loader` of a latent stage: every record of the split is a fixed clip's latents
  (encoded once by `--mode=build_latents`), so there is no crop, only the shuffle."""
  data = open_latent_split(config, split)
  source = IndexedSource(data, f"latents:{data.meta['dataset'].get('name', '')}/{split}")
  if len(source) < process_count:
    raise ValueError(f"{len(source)} records cannot be shared by {process_count} hosts.")
  shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                      drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=True, num_epochs=num_epochs,
      seed=int(config.data.shuffle_seed))
  operations = [LatentRows(data.stats, text_store=text_store,
                           ignore_captions=build.ignores_captions(config)),
                grain.transforms.Batch(batch_size=batch // process_count, drop_remainder=True)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=int(config.data.worker_count), shard_options=shard)


def make_train_iterator(config, *, split: str = "train", text_store=None,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        num_epochs: Optional[int] = None) -> grain.DataLoaderIterator:
  """A checkpointable iterator of per-host batches (see the module docstring for the keys).

  Save its position with `it.get_state()` (bytes) and restore it into a fresh iterator of the
  same config with `it.set_state(state)`. `text_store` is anything with
  `lookup(caption) -> (emb [L, D] float32, mask [L] bool)`, `.max_length` and `.dim`.
  """
  return iter(make_data_loader(config, split=split, text_store=text_store,
                               process_index=process_index, process_count=process_count,
                               num_epochs=num_epochs))


def to_global_batch(local_batch: dict, mesh, *, batch_axes=("data", "fsdp")) -> dict:
  """Assembles per-host numpy batches into global jax Arrays sharded over the batch axis.

  Every array's leading (batch) dimension is split over the mesh axes `batch_axes` (those the
  mesh has); the global batch is the concatenation of all hosts' local batches.
  """
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  sharding = NamedSharding(mesh, PartitionSpec(axes or None))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
