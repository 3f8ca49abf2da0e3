"""What every model family provides, and what callers get from it: one interface per family.

A family (the space-time U-Net; the autoencoders, the video transformer to come) is a folder
under `vdm_jax/models/` exposing `FAMILY`, a `ModelFamily`: its name, how to read and check its
`model` config section into a frozen spec, the Linen module it builds, the keys older configs
lack (and what they meant) and its default section. `vdm_jax.models.registry.family(config.model)`
binds a family to one config section as a `ModelInterface`, which every caller goes through:

    fam = registry.family(config.model)
    model = fam.module()                        # the nn.Module
    fam.inputs                                  # keyword inputs it takes besides x and logsnr
    kw = fam.model_inputs(batch)                # a pipeline batch -> exactly those inputs
    batch = fam.example_batch(config, 2)        # zeros shaped like the stage's pipeline batch
    init = fam.init_fn(model, batch_like=batch) # key -> boxed params (for sharded init)

The diffusion objective, distillation, samplers and the cascade see only this interface, so a new
family that takes the same conditioning inputs (text, fps, low-resolution video, known frames,
the guidance weight) plugs into all of them.

Inputs a family can take (`ModelInterface.inputs`), with the pipeline batch key they come from:
  text_emb, text_mask   [B, L, D], [B, L] bool     batch 'text_emb', 'text_mask'
  fps                   [B] float                  batch 'fps'
  is_image              [B] bool                   batch 'is_image' (when present)
  lowres_video          [B, T', H', W', C]         batch 'lowres'
  frame_cond, frame_mask [B, T, H, W, C], [B, T]   batch 'video' at the known frames, 'frame_mask'
  cond_aug_logsnr       [B]                        drawn by the objective / sampler
  guidance_weight       [B]                        drawn by guided distillation / the sampler
"""
import dataclasses
from typing import Any, Callable, FrozenSet, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import errors
from vdm_jax.models import inflation

TRAINABLE = ("all", "temporal")      # train.trainable
INPUTS = ("text_emb", "text_mask", "fps", "is_image", "lowres_video", "frame_cond",
          "frame_mask", "cond_aug_logsnr", "guidance_weight")
# Inputs the objective or sampler makes up (not read from a batch): zeros at init.
DRAWN_INPUTS = ("cond_aug_logsnr", "guidance_weight")
# The pipeline batch entries a model input can come from (the rest, e.g. 'index', is ignored).
BATCH_KEYS = ("video", "fps", "is_image", "text_emb", "text_mask", "lowres", "frame_mask")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """The definition of one model family (see the module docstring).

  Attributes:
    name: the value of `config.model.family` that selects it.
    spec: model section -> the validated, frozen spec; raises ValueError naming the bad key.
      The spec has `inputs` (a frozenset of INPUTS names it takes) and
      `geometry_errors(frames=, height=, width=)` (messages for a video it cannot take).
    module: spec's model section -> the Linen module (`module(config.model)`).
    default_section: () -> a `model` ConfigDict with every key at its default.
    optional: keys added to the section after checkpoints were written with it, with the
      value such a checkpoint was trained with (a missing key means this).
  """
  name: str
  spec: Callable[[Any], Any]
  module: Callable[[Any], nn.Module]
  default_section: Callable[[], Any]
  optional: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Parameter path ("down0_res0/temporal/conv/kernel") -> whether it is temporal: a layer that
  # mixes frames or reads a video-only input (inflation, train.trainable='temporal'); None
  # when the family has no such split.
  temporal_param: Optional[Callable[[str], bool]] = None
  # New temporal parameters that inflation sets to zero so their layer starts as the identity.
  zero_when_inflated: Callable[[str], bool] = lambda path: False
  # What the module is: 'denoiser' (called as (x, logsnr, **inputs), trained by the diffusion
  # objective, sampled by the samplers) or 'autoencoder' (called as (x) -> (reconstruction,
  # posterior); trained by its own objective; encodes and decodes, never sampled from).
  kind: str = "denoiser"
  # (config, module) -> loss(params, groups, key) -> (loss, aux with 'loss_per_example' [rows],
  # optionally 'metrics' {name: scalar} and 'row_is_image'), for a family with its own
  # objective (None: the diffusion objective of vdm_jax.train.objective). `groups`: the batch's
  # videos [B, T, H, W, C], then its extra images [B * K, 1, H, W, C] in joint training. A loss
  # with the attribute takes_step = True also gets the keyword step (the train step counter).
  objective: Optional[Callable[[Any, nn.Module], Callable]] = None
  # (module, x [B, T, H, W, C]) -> key -> boxed params, for a module not called as
  # (x, logsnr, **inputs) (None: ModelInterface.init_fn's denoiser init).
  init: Optional[Callable[[nn.Module, Any], Callable]] = None
  # config -> the problems of the config sections its own objective reads (with `objective`).
  config_errors: Optional[Callable[[Any], list]] = None

  def validate(self, model_cfg) -> list[str]:
    """The problems of a `model` section (empty when it is valid)."""
    try:
      self.spec(model_cfg)
    except (ValueError, TypeError, KeyError) as e:
      return [str(e)]
    return []

  def with_optional_keys(self, model_section: Mapping[str, Any]) -> dict:
    """A saved `model` section (plain dict) with the keys it predates at the values it meant;
    tuples as lists, as JSON has them."""
    out = dict(model_section)
    for key, value in self.optional.items():
      out.setdefault(key, list(value) if isinstance(value, tuple) else value)
    return out


@dataclasses.dataclass(frozen=True)
class ModelInterface:
  """A family bound to one `model` config section: what callers use."""
  family: ModelFamily
  config: Any      # the model section
  spec: Any

  @property
  def name(self) -> str:
    return self.family.name

  @property
  def inputs(self) -> FrozenSet[str]:
    """The keyword inputs the module takes besides (x, logsnr, train)."""
    return self.spec.inputs

  @property
  def is_denoiser(self) -> bool:
    """Whether the module is a denoiser (diffusion objective, samplers, cascades)."""
    return self.family.kind == "denoiser"

  def require_denoiser(self, what: str) -> None:
    """Raises ConfigError (a ValueError) when the module is not a denoiser: `what` needs one."""
    if not self.is_denoiser:
      raise errors.ConfigError(f"{what} needs a denoiser, but model.family={self.name!r} is an "
                       f"{self.family.kind} (it encodes and decodes videos; train it with "
                       "--mode=train and use it as a latent diffusion stage's autoencoder)")

  @property
  def needs_text(self) -> bool:
    return "text_emb" in self.inputs

  @property
  def takes_lowres(self) -> bool:
    return "lowres_video" in self.inputs

  @property
  def takes_frame_masks(self) -> bool:
    """Known frames and their mask (masked frame interpolation)."""
    return "frame_mask" in self.inputs

  @property
  def takes_guidance_weight(self) -> bool:
    """A guided-distillation student: w is a model input."""
    return "guidance_weight" in self.inputs

  @property
  def takes_cond_aug(self) -> bool:
    return "cond_aug_logsnr" in self.inputs

  def module(self) -> nn.Module:
    return self.family.module(self.config)

  def _temporal(self):
    if self.family.temporal_param is None:
      raise ValueError(f"model family {self.name!r} does not split its parameters into "
                       "spatial and temporal ones (no inflation, train.trainable='all' only)")
    return self.family.temporal_param

  def trainable_labels(self, params: Any, trainable: str = "all") -> Any:
    """A tree like `params` of "trainable" / "frozen" per parameter, for `train.trainable`:
    'all', or 'temporal' (the temporal parameters only: the spatial layers stay frozen)."""
    if trainable not in TRAINABLE:
      raise ValueError(f"train.trainable={trainable!r} is not one of {TRAINABLE}")
    is_trainable = (lambda path: True) if trainable == "all" else self._temporal()
    return inflation.label_tree(params, is_trainable)

  def inflate(self, image_params: Any, video_params: Any):
    """(params, InflationReport): `video_params` (a fresh init of this model) with every
    parameter of `image_params` (the same network without temporal layers) copied in; the
    result computes the image model frame by frame (see vdm_jax.models.inflation)."""
    return inflation.inflate(image_params, video_params, is_temporal=self._temporal(),
                             zero_when_new=self.family.zero_when_inflated)

  def geometry_errors(self, *, frames: int, height: int, width: int) -> list[str]:
    """What keeps a video of this geometry from passing through the model ([] when fine)."""
    return self.spec.geometry_errors(frames=frames, height=height, width=width)

  def model_inputs(self, batch: Mapping[str, Any]) -> dict:
    """The module's keyword inputs from a batch: text_emb/text_mask [B, L(, D)], fps [B],
    is_image [B], lowres_video [B, T', H', W', C], and for masked frame interpolation
    frame_mask [B, T] (from the batch) with frame_cond = the batch video at its known frames,
    as the module takes them (the drawn inputs, cond_aug_logsnr and guidance_weight, are the
    caller's)."""
    inputs, kw = self.inputs, {}
    if "text_emb" in inputs:
      kw["text_emb"] = batch["text_emb"]
      kw["text_mask"] = batch["text_mask"].astype(jnp.bool_)
    if "fps" in inputs:
      kw["fps"] = batch["fps"].astype(jnp.float32)
    if "is_image" in inputs and "is_image" in batch:
      kw["is_image"] = batch["is_image"].astype(jnp.bool_)
    if "lowres_video" in inputs:
      if "lowres" not in batch:
        raise ValueError("model.lowres_conditioning is set but the batch has no 'lowres' "
                         "video; train an SR stage on a pipeline that yields it (data section).")
      kw["lowres_video"] = batch["lowres"]
    if "frame_mask" in inputs:
      if "frame_mask" not in batch:
        raise ValueError("model.frame_mask_conditioning is set but the batch has no "
                         "'frame_mask' [B, T]; draw one with draw_frame_masks (the training "
                         "loss does).")
      mask = batch["frame_mask"].astype(jnp.bool_)
      kw["frame_mask"] = mask
      kw["frame_cond"] = jnp.where(mask[:, :, None, None, None],
                                   batch["video"].astype(jnp.float32), 0.0)
    return kw

  def example_batch(self, config, batch_size: int = 1) -> dict:
    """Zeros laid out like a pipeline batch of the stage `config` (whose `model` section this
    is): the shapes init traces."""
    b = {"video": np.zeros((batch_size, config.frames, config.height, config.width,
                            config.channels), np.float32),
         "fps": np.zeros((batch_size,), np.float32),
         "is_image": np.zeros((batch_size,), bool)}
    if self.needs_text:
      length = int(config.text.max_length)
      b["text_emb"] = np.zeros((batch_size, length, int(self.config.text_embed_dim)),
                               np.float32)
      b["text_mask"] = np.zeros((batch_size, length), bool)
    if self.takes_lowres:
      d = config.data
      b["lowres"] = np.zeros((batch_size, int(d.lowres_frames), int(d.lowres_height),
                              int(d.lowres_width), config.channels), np.float32)
    return b

  def init_fn(self, model: nn.Module, *, batch_like: Mapping[str, Any], batch_size: int = 1):
    """key -> boxed params of `model`, traced on a `batch_size` slice of a batch's shapes
    (other batch entries, e.g. a joint batch's extra images, are ignored)."""
    if self.family.init is not None:
      video = batch_like["video"]
      return self.family.init(model, jax.ShapeDtypeStruct((batch_size,) + tuple(video.shape[1:]),
                                                          jnp.float32))

    def init(key):
      small = {k: jnp.zeros((batch_size,) + tuple(v.shape[1:]), v.dtype)
               for k, v in batch_like.items() if k in BATCH_KEYS}
      if self.takes_frame_masks:
        small.setdefault("frame_mask", jnp.zeros(small["video"].shape[:2], jnp.bool_))
      kw = self.model_inputs(small)
      for name in DRAWN_INPUTS:
        if name in self.inputs:
          kw[name] = jnp.zeros((batch_size,), jnp.float32)
      x = small["video"].astype(jnp.float32)
      return model.init({"params": key}, x, jnp.zeros((batch_size,), jnp.float32),
                        **kw)["params"]
    return init

  def abstract_inputs(self, *, frames: int, height: int, width: int, batch: int = 1,
                      channels: int = 3, text_length: int = 8, lowres=None):
    """(x, logsnr, kw) as jax.ShapeDtypeStructs for `jax.eval_shape` of the module; `lowres`
    is the low-resolution video's shape for a module that takes one."""
    f32, sds = jnp.float32, jax.ShapeDtypeStruct
    kw = {}
    if self.needs_text:
      kw["text_emb"] = sds((batch, text_length, int(self.config.text_embed_dim)), f32)
      kw["text_mask"] = sds((batch, text_length), jnp.bool_)
    for name in ("fps",) + DRAWN_INPUTS:
      if name in self.inputs:
        kw[name] = sds((batch,), f32)
    if self.takes_lowres:
      if lowres is None:
        raise ValueError("give the lowres video shape for a model that takes one (SR stage)")
      kw["lowres_video"] = sds(tuple(lowres), f32)
    if self.takes_frame_masks:
      kw["frame_cond"] = sds((batch, frames, height, width, channels), f32)
      kw["frame_mask"] = sds((batch, frames), jnp.bool_)
    return sds((batch, frames, height, width, channels), f32), sds((batch,), f32), kw

  def abstract_params(self, **geometry) -> Any:
    """The parameter tree as ShapeDtypeStructs (jax.eval_shape: nothing allocated); keyword
    arguments as `abstract_inputs`."""
    model = self.module()
    x, logsnr, kw = self.abstract_inputs(**geometry)
    if self.family.init is not None:
      return nn.unbox(jax.eval_shape(self.family.init(model, x), jax.random.key(0)))
    shapes = jax.eval_shape(
        lambda x, logsnr, kw: model.init(jax.random.key(0), x, logsnr, **kw), x, logsnr, kw)
    return nn.unbox(shapes)["params"]

  def count_params(self, **geometry) -> int:
    """The number of parameters (from `abstract_params`)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(
        self.abstract_params(**geometry))))
