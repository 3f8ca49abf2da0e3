"""Latent datasets: every clip of a split encoded once by a frozen autoencoder (latent diffusion).

    python -m vdm_jax.main --mode=build_latents --config=configs/latent.py   # writes data.latents

A latent dataset is a directory (`config.data.latents`) with two files per split:

  <split>.safetensors   'latents' float32 [N, T', H', W', C']: the posterior means of the clips
                        as the encoder gives them (not normalized); nothing pickled
  <split>.json          the sidecar: format and version, num_clips, latent_shape, video_shape
                        (the clips' [T, H, W, C] at their fps), captions [N], fps [N], the
                        dataset it came from, the autoencoder's identity (path, checkpoint step,
                        sha256 of its parameters, its model section), the per-channel shift and
                        scale, and the sha256 of <split>.safetensors, checked before the file is
                        parsed (`read_split`): a changed or damaged file is refused, named.

Per-channel statistics (Stable Diffusion's scale factor, per channel as in SD3 / Wan 2.1): over
every latent position of the train split, shift = -mean and scale = 1 / std, so that
`normalize(z) = (z + shift) * scale` has zero mean and unit variance per channel. They are
stored with the autoencoder, in `latent_stats.json` beside its checkpoints (or its exported
params), with the checkpoint step and the sha256 of the parameters they belong to: a latent
stage's sampler un-normalizes with them (`denormalize`) before decoding.

The training pipeline (`pipeline.make_data_loader` with `data.latents` set) reads a split with
`open_split`, which also checks that the stage's frames/height/width/channels are the latent
shape, and yields `video` = the normalized latents (see `pipeline.LatentRows`).
`config_errors(config)` lists the problems of a latent stage's config before anything loads.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from vdm_jax import errors
from vdm_jax.data import video_io
from vdm_jax.integrity import sha256_file
from vdm_jax.weights import write_json

FORMAT, VERSION = "vdm_jax.latents", 1
STATS_FORMAT = "vdm_jax.latent_stats"
STATS_FILE = "latent_stats.json"          # beside an autoencoder's checkpoints
TENSOR = "latents"
MIN_STD = 1e-6                            # a constant channel gets scale 1 / MIN_STD


class LatentDataError(errors.UserError, ValueError):
  """A latent dataset file that is missing, changed since it was written, or of another stage."""


def is_latent_config(config) -> bool:
  """Whether `config` is a latent diffusion stage (`data.latents` names a latent dataset)."""
  return bool(config.data.get("latents", ""))


def split_paths(directory: str, split: str) -> tuple[str, str]:
  """(<directory>/<split>.safetensors, <directory>/<split>.json)."""
  return (os.path.join(directory, f"{split}.safetensors"),
          os.path.join(directory, f"{split}.json"))


@dataclasses.dataclass(frozen=True)
class LatentStats:
  """Per-channel shift and scale: normalize(z) = (z + shift) * scale."""
  shift: np.ndarray            # float32 [C']
  scale: np.ndarray            # float32 [C']

  def normalize(self, z):
    """Latents [..., C'] (numpy or jax) -> zero mean, unit variance per channel."""
    return (z + self.shift) * self.scale

  def denormalize(self, x):
    """The inverse of `normalize`: what the decoder takes."""
    return x / self.scale - self.shift

  def to_dict(self) -> dict:
    return {"shift": [float(v) for v in self.shift], "scale": [float(v) for v in self.scale]}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LatentStats":
    shift, scale = np.asarray(d["shift"], np.float32), np.asarray(d["scale"], np.float32)
    if shift.shape != scale.shape or shift.ndim != 1:
      raise ValueError(f"latent stats need one shift and one scale per channel; got shapes "
                       f"{shift.shape} and {scale.shape}")
    return cls(shift=shift, scale=scale)

  def equals(self, other: "LatentStats") -> bool:
    return (self.shift.shape == other.shift.shape and np.allclose(self.shift, other.shift,
                                                                  rtol=1e-6, atol=0)
            and np.allclose(self.scale, other.scale, rtol=1e-6, atol=0))


def compute_stats(latents: np.ndarray) -> LatentStats:
  """shift = -mean and scale = 1 / std per channel (the last axis) over every other axis of
  `latents` [N, T', H', W', C'] (accumulated in float64)."""
  z = np.asarray(latents, np.float64).reshape(-1, np.shape(latents)[-1])
  mean, std = z.mean(axis=0), z.std(axis=0)
  return LatentStats(shift=(-mean).astype(np.float32),
                     scale=(1.0 / np.maximum(std, MIN_STD)).astype(np.float32))


# --- encoding the clips of a split -----------------------------------------------------------

def clip_at_geometry(video: np.ndarray, *, source_fps: float, frames: int, height: int,
                     width: int, fps: float) -> tuple[np.ndarray, float]:
  """The clip a latent is made of: the first `frames` frames of a stored clip uint8
  [T0, H0, W0, 3] at stride round(source_fps / fps) (shrunk to fit, as the pixel pipeline's
  temporal crop), scaled to cover height x width and centre-cropped. Returns (uint8
  [frames, height, width, 3], its fps)."""
  total = video.shape[0]
  stride = max(1, int(round(source_fps / fps))) if source_fps > 0 else 1
  while stride > 1 and (frames - 1) * stride + 1 > total:
    stride -= 1
  if (frames - 1) * stride + 1 > total:
    raise ValueError(f"A stored clip has {total} frames, fewer than the {frames} the "
                     "autoencoder encodes.")
  clip = np.asarray(video)[:(frames - 1) * stride + 1:stride]
  return video_io.resize_and_crop(np.ascontiguousarray(clip), height, width), (
      float(source_fps) / stride if source_fps > 0 else float(fps))


def encode_source(source: Sequence[Mapping[str, Any]], encode: Callable[[np.ndarray], np.ndarray],
                  *, frames: int, height: int, width: int, fps: float, batch_size: int,
                  progress: Optional[Callable[[str], None]] = print,
                  what: str = "") -> tuple[np.ndarray, list[str], np.ndarray]:
  """Encodes every record of `source` (random access, records with 'video' uint8, 'caption'
  and 'fps', as a tfds data source gives them) once, in batches of `batch_size` clips.

  `encode` maps float32 clips [b, T, H, W, 3] in [-1, 1] to their posterior means
  [b, T', H', W', C'] (always called with b = batch_size: the last batch is padded). Returns
  (latents float32 [N, T', H', W', C'], captions [N], fps float32 [N]).
  """
  n = len(source)
  if not n:
    raise ValueError(f"{what or 'The split'} has no clips to encode.")
  out, captions, rates = [], [], []
  report = max(1, n // batch_size // 10)
  for b, start in enumerate(range(0, n, batch_size)):
    clips = []
    for i in range(start, min(start + batch_size, n)):
      record = source[i]
      if "video" not in record:
        raise ValueError(f"{what or 'The dataset'} holds images, not clips: build latents "
                         "from a video dataset (moving_shapes, video_folder).")
      clip, rate = clip_at_geometry(record["video"], source_fps=float(record["fps"]),
                                    frames=frames, height=height, width=width, fps=fps)
      clips.append(clip.astype(np.float32) / 127.5 - 1.0)
      caption = record["caption"]
      captions.append(caption.decode("utf-8") if isinstance(caption, bytes) else str(caption))
      rates.append(rate)
    m = len(clips)
    clips += [np.zeros_like(clips[0])] * (batch_size - m)   # one compiled shape
    out.append(np.asarray(encode(np.stack(clips)), np.float32)[:m])
    if progress is not None and ((b + 1) % report == 0 or start + m == n):
      progress(f"build_latents: {what} {start + m}/{n} clips encoded")
  return np.concatenate(out), captions, np.asarray(rates, np.float32)


# --- files ----------------------------------------------------------------------------------

def write_split(directory: str, split: str, latents: np.ndarray, *, captions: Sequence[str],
                fps: Sequence[float], video_shape: Sequence[int], stats: LatentStats,
                autoencoder: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict:
  """Writes <split>.safetensors and its sidecar <split>.json (see the module docstring);
  returns the sidecar."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  latents = np.ascontiguousarray(latents, np.float32)
  if latents.ndim != 5 or len(captions) != len(latents) or len(fps) != len(latents):
    raise ValueError(f"latents {latents.shape} must be [N, T', H', W', C'] with one caption and "
                     f"one fps per clip (got {len(captions)} and {len(fps)})")
  os.makedirs(directory, exist_ok=True)
  data_path, meta_path = split_paths(directory, split)
  save_file({TENSOR: latents}, data_path + ".tmp", metadata={"format": FORMAT})
  os.replace(data_path + ".tmp", data_path)
  meta = {"format": FORMAT, "version": VERSION, "split": split,
          "file": os.path.basename(data_path), "sha256": sha256_file(data_path),
          "num_clips": int(len(latents)), "latent_shape": list(latents.shape[1:]),
          "video_shape": [int(v) for v in video_shape],
          "captions": list(captions), "fps": [float(v) for v in fps],
          "stats": stats.to_dict(), "autoencoder": dict(autoencoder), "dataset": dict(dataset)}
  write_json(meta_path, meta)
  return meta


def read_meta(directory: str, split: str) -> dict:
  """The sidecar of `split` (format and version checked; the data file is not read)."""
  _, meta_path = split_paths(directory, split)
  if not os.path.isfile(meta_path):
    raise LatentDataError(
        f"No latent dataset at {meta_path}: build it with `python -m vdm_jax.main "
        "--mode=build_latents --config=<this config>` (it encodes data.name's clips with "
        "latent.autoencoder into data.latents).")
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise LatentDataError(f"{meta_path} is unreadable or not JSON ({e}).") from e
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise LatentDataError(f"{meta_path} is not a {FORMAT} sidecar of version {VERSION} "
                          f"(format {meta.get('format')!r}, version {meta.get('version')!r}).")
  return meta


@dataclasses.dataclass
class LatentSplit:
  """One split in memory: a random-access source of {'latents', 'caption', 'fps'} records."""
  latents: np.ndarray          # float32 [N, T', H', W', C'], not normalized
  meta: dict

  @property
  def captions(self) -> list[str]:
    return list(self.meta["captions"])

  @property
  def stats(self) -> LatentStats:
    return LatentStats.from_dict(self.meta["stats"])

  def __len__(self) -> int:
    return len(self.latents)

  def __getitem__(self, index) -> dict:
    i = int(index)
    return {"latents": self.latents[i], "caption": self.meta["captions"][i],
            "fps": np.float32(self.meta["fps"][i])}


def read_split(directory: str, split: str) -> LatentSplit:
  """The latents of `split`, their file checked against the sidecar's sha256 before parsing;
  LatentDataError naming the file when it is missing, changed or not what the sidecar says."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  meta = read_meta(directory, split)
  data_path, meta_path = split_paths(directory, split)
  if not os.path.isfile(data_path):
    raise LatentDataError(f"{data_path} is missing (its sidecar {meta_path} is there); build "
                          "the latents again with --mode=build_latents.")
  got = sha256_file(data_path)
  if got != meta["sha256"]:
    raise LatentDataError(
        f"{data_path} does not match its sidecar: its sha256 is {got}, {meta_path} records "
        f"{meta['sha256']}. The file was changed or damaged after it was written; build the "
        "latents again with --mode=build_latents.")
  try:
    latents = load_file(data_path)[TENSOR]
  except (SafetensorError, OSError, ValueError, KeyError) as e:
    raise LatentDataError(f"{data_path} is not a readable latent file ({e}).") from e
  if list(latents.shape) != [meta["num_clips"]] + list(meta["latent_shape"]):
    raise LatentDataError(f"{data_path} holds latents {list(latents.shape)}, its sidecar says "
                          f"{[meta['num_clips']] + list(meta['latent_shape'])}.")
  return LatentSplit(latents=latents, meta=meta)


def write_stats(autoencoder_dir: str, stats: LatentStats, *, step: int, params_sha256: str,
                computed_on: Mapping[str, Any]) -> str:
  """Writes `<autoencoder_dir>/latent_stats.json`; returns its path."""
  path = os.path.join(autoencoder_dir, STATS_FILE)
  write_json(path, {"format": STATS_FORMAT, "version": VERSION, "step": int(step),
                     "params_sha256": params_sha256, **stats.to_dict(),
                     "computed_on": dict(computed_on)})
  return path


def read_stats(autoencoder_dir: str) -> Optional[dict]:
  """The latent_stats.json of an autoencoder directory, or None when it has none."""
  path = os.path.join(autoencoder_dir, STATS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise LatentDataError(f"{path} is unreadable or not JSON ({e}).") from e
  if out.get("format") != STATS_FORMAT:
    raise LatentDataError(f"{path} is not a {STATS_FORMAT} file.")
  return out


# --- a latent stage's config --------------------------------------------------------------

def shape_errors(config, meta: Mapping[str, Any], where: str) -> list[str]:
  """What keeps the stage `config` from training on the latents a sidecar describes."""
  want = [int(v) for v in meta["latent_shape"]]
  got = [int(config.frames), int(config.height), int(config.width), int(config.channels)]
  out = []
  if got != want:
    names = ("frames", "height", "width", "channels")
    diff = ", ".join(f"{n}={g} (latents: {w})" for n, g, w in zip(names, got, want) if g != w)
    out.append(f"the latents in {where} are [T', H', W', C'] = {want}, but the config has "
               f"{diff}; set frames, height, width, channels = {want}")
  rates = sorted(set(float(v) for v in meta.get("fps", [])))
  if len(rates) == 1 and abs(float(config.fps) - rates[0]) > 1e-6 * rates[0]:
    out.append(f"fps={config.fps} but the clips in {where} were encoded at {rates[0]} fps; set "
               f"fps={rates[0]}")
  return out


def config_errors(config, *, check_files: bool = True) -> list[str]:
  """The problems of a latent stage's config (none for a pixel stage): the keys it needs, the
  settings it cannot take, and, with `check_files` when the latent dataset is built, its shape
  against the config's geometry and its statistics against the autoencoder's
  latent_stats.json (`--mode=build_latents` rewrites them, so it does not check them)."""
  if not is_latent_config(config):
    return []
  d, out = config.data, []
  latent = config.get("latent", {})
  if not latent or not latent.get("autoencoder", ""):
    out.append("data.latents is set but latent.autoencoder is empty: name the autoencoder the "
               "latents are encoded with and decoded by (its training workdir or exported "
               "stage directory)")
  if config.get("stage") != "base":
    out.append(f"data.latents: a latent stage must be a base stage (stage='base'), not "
               f"{config.get('stage')!r}; its decoded output can feed pixel SR stages")
  if int(d.get("images_per_video", 0)):
    out.append("data.latents: joint image training (data.images_per_video > 0) is not "
               "available for latents; set data.images_per_video=0")
  if any(int(d.get(k, 0)) for k in ("crop_frames", "crop_height", "crop_width")):
    out.append("data.latents: training crops (data.crop_*) are not available for latents; set "
               "data.crop_frames = data.crop_height = data.crop_width = 0")
  m = config.model
  if m.get("family", "unet") == "unet" and int(m.get("out_channels", config.channels)) != int(
      config.channels):
    out.append(f"model.out_channels={m.out_channels} but channels={config.channels}: the U-Net "
               "predicts the latents, so set model.out_channels = channels")
  if config.sample.get("clip", "none") != "none":
    out.append(f"sample.clip={config.sample.clip!r}: normalized latents are not bounded in "
               "[-1, 1], so a latent stage samples with sample.clip='none' (the decoded video "
               "is clipped instead)")
  _, meta_path = split_paths(d.latents, "train")
  if check_files and os.path.isfile(meta_path):
    try:
      meta = read_meta(d.latents, "train")
    except LatentDataError as e:
      return out + [str(e)]
    out += shape_errors(config, meta, meta_path)
    ae_dir = latent.get("autoencoder", "") if latent else ""
    saved = read_stats(ae_dir) if ae_dir and os.path.isdir(ae_dir) else None
    if saved is not None and not LatentStats.from_dict(saved).equals(
        LatentStats.from_dict(meta["stats"])):
      out.append(f"the latents in {d.latents} were normalized with other statistics than "
                 f"{os.path.join(ae_dir, STATS_FILE)} (step {saved.get('step')}); build the "
                 "latents again with --mode=build_latents")
  return out

