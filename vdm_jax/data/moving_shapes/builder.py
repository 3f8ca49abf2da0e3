"""tfds builders for the procedural domain: `moving_shapes` (clips) and `moving_shapes_images`.

Both write array_record files and work without TensorFlow (Tensor / Text / Scalar features
only). Every example is a pure function of (seed, split, index): example i of a split is drawn
from `np.random.default_rng([seed, split_id, i])`, so builds are byte-for-byte reproducible and
independent of the order examples are generated in.

Features of `moving_shapes`:
  video     uint8 [T, H, W, 3]   the rendered clip (see `render.render`), zlib-compressed
  caption   text                 `grammar.caption(spec)`
  fps       float32              frames per second of the stored clip
  held_out  int32                1 if an object carries a held-out attribute combo
  + the flat labels of `grammar.labels_to_dict` (num_objects, background, obj{i}_*).
`moving_shapes_images` stores `image` uint8 [H, W, 3] instead of `video`, a caption without
motion, fps = 0 and all objects "still".

Splits: `train` never contains a held-out combo; `test` holds
`round(num_test * test_held_out_fraction)` examples that do (object 0 carries one, chosen
uniformly) followed by regular ones (before tfds's deterministic shuffle of record order).

Builds live in `<data_dir>/<tfds name>/<config name>/1.0.0`: the class names (tfds names
`moving_shapes`, `moving_shapes_images`) and `make_config`'s naming must not change, or builds
made earlier stop loading.
"""
import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import tfds_compat
from vdm_jax.data.moving_shapes import grammar
from vdm_jax.data.moving_shapes import render

SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
  """What to render. Build one with `make_config` so the name identifies its parameters."""
  frames: int = 16
  height: int = 32
  width: int = 32
  fps: float = 8.0
  num_train: int = 2048
  num_test: int = 256
  seed: int = 0
  held_out: tuple = ()             # combos of vocabulary words, e.g. (("red", "triangle"),)
  test_held_out_fraction: float = 0.5
  two_object_prob: float = 0.3
  vocabulary: tuple = ()           # ((kind, (words...)), ...) restricted kinds; () = every word


def parse_vocabulary(vocabulary) -> tuple:
  """A vocabulary mapping (kind -> allowed words; empty = all) as the sorted, hashable tuple of
  its restricted kinds, ((kind, words), ...); () when nothing is restricted."""
  full = grammar.check_vocabulary(vocabulary)
  return tuple((k, w) for k, w in sorted(full.items()) if w != grammar.VOCABULARY[k])


def parse_combos(held_out) -> tuple:
  """Accepts combos as word tuples or space-separated strings ("red triangle")."""
  combos = tuple(tuple(c.split()) if isinstance(c, str) else tuple(c) for c in held_out)
  return grammar.check_combos(combos)


def make_config(*, frames=16, height=32, width=32, fps=8.0, num_train=2048, num_test=256,
                seed=0, held_out=(), test_held_out_fraction=0.5,
                two_object_prob=0.3, vocabulary=None) -> MovingShapesConfig:
  """A validated config whose name encodes its parameters (a new directory per change).

  `vocabulary` ({kind: words}, see `grammar.check_vocabulary`) restricts the words clips
  use, e.g. {"speed": ("fast",)}; held-out combos must use allowed words.
  """
  held_out = parse_combos(held_out)
  vocab = parse_vocabulary(vocabulary)
  allowed = grammar.check_vocabulary(dict(vocab))
  for combo in held_out:
    outside = [w for w in combo if w not in allowed[grammar.ATTRIBUTE_OF[w]]]
    if outside:
      raise ValueError(f"Held-out combo {combo} uses {outside}, outside the vocabulary "
                       f"{dict(vocab)}: it could never appear in the test split.")
  if two_object_prob > 0 and len(allowed["color"]) < 2:
    raise ValueError(f"two_object_prob={two_object_prob} needs at least two colours in the "
                     f"vocabulary, got {allowed['color']}.")
  grammar.validate_geometry(frames=frames, fps=fps, height=height, width=width)
  if num_train < 1 or num_test < 1:
    raise ValueError(f"num_train={num_train} and num_test={num_test} must be positive.")
  if not 0.0 <= test_held_out_fraction <= 1.0:
    raise ValueError(f"test_held_out_fraction={test_held_out_fraction} must lie in [0, 1].")
  params = dict(frames=int(frames), height=int(height), width=int(width), fps=float(fps),
                num_train=int(num_train), num_test=int(num_test), seed=int(seed),
                held_out=held_out, test_held_out_fraction=float(test_held_out_fraction),
                two_object_prob=float(two_object_prob))
  if vocab:  # only a restricted vocabulary enters the name: unrestricted names stay as they were
    params["vocabulary"] = [[k, list(w)] for k, w in vocab]
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  name = f"f{frames}_r{height}x{width}_n{num_train}_seed{seed}_{digest}"
  params["vocabulary"] = vocab
  return MovingShapesConfig(name=name, description=json.dumps(params), **params)


def num_held_out_test(cfg: MovingShapesConfig) -> int:
  return int(round(cfg.num_test * cfg.test_held_out_fraction)) if cfg.held_out else 0


def sample_example_spec(cfg: MovingShapesConfig, split: str, index: int,
                        image: bool = False) -> grammar.ClipSpec:
  """The spec of example `index` of `split` (a pure function of the config)."""
  rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], index, int(image)])
  combos = cfg.held_out
  if image:  # motion words cannot apply to images
    combos = tuple(c for c in combos
                   if not any(grammar.ATTRIBUTE_OF[w] in ("motion", "speed") for w in c))
  include = split == "test" and bool(combos) and index < num_held_out_test(cfg)
  return grammar.sample_spec(
      rng, frames=cfg.frames, height=cfg.height, width=cfg.width, fps=cfg.fps,
      two_object_prob=cfg.two_object_prob, held_out=combos, include_held_out=include,
      image=image, vocabulary=dict(cfg.vocabulary))


def _label_features() -> dict:
  return {k: tfds.features.Scalar(dtype=v) for k, v in grammar.label_keys().items()}


class _ProceduralBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses say whether they store clips or images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [make_config()]
  IMAGE = False

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  code_path = tfds_compat.code_path

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (cfg.height, cfg.width, 3) if self.IMAGE else (cfg.frames, cfg.height, cfg.width, 3)
    pixels = {("image" if self.IMAGE else "video"): tfds.features.Tensor(
        shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)}
    features = tfds.features.FeaturesDict({
        **pixels,
        "caption": tfds.features.Text(),
        "fps": tfds.features.Scalar(dtype=np.float32),
        "held_out": tfds.features.Scalar(dtype=np.int32),
        **_label_features(),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_IDS}

  def _generate_examples(self, split):
    cfg = self.builder_config
    count = cfg.num_train if split == "train" else cfg.num_test
    for index in range(count):
      spec = sample_example_spec(cfg, split, index, image=self.IMAGE)
      pixels = render.render(spec)
      example = {
          "caption": grammar.caption(spec),
          "fps": np.float32(0.0 if self.IMAGE else cfg.fps),
          "held_out": np.int32(grammar.is_held_out(spec, cfg.held_out)),
          **grammar.labels_to_dict(spec),
      }
      if self.IMAGE:
        example["image"] = pixels[0]
      else:
        example["video"] = pixels
      yield f"{split}_{index:07d}", example


class MovingShapes(_ProceduralBuilder):
  """Procedural text-video clips: coloured shapes moving on plain backgrounds."""
  IMAGE = False


class MovingShapesImages(_ProceduralBuilder):
  """Procedural text-image pairs: single frames of still shapes, captions without motion."""
  IMAGE = True
