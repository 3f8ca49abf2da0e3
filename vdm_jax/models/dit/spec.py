"""The validated, hashable form of the `model` section of a video diffusion transformer
(family 'dit').

`DiTSpec.from_config(config.model)` checks every key before anything is traced or compiled and
says what is wrong and what to do.
"""
import dataclasses
from typing import Tuple

from vdm_jax.models.spec_common import (ATTENTION_IMPLS, DTYPES, LOWRES_CONDITIONING,
                                        LOWRES_TEMPORAL_UPSAMPLE, REMAT, DtypeProperties)

ATTENTION_LAYOUTS = ("full", "alternating")
TEXT_CONDITIONING = ("cross", "joint", "none")
TEXT_PROJECTIONS = ("linear", "mlp")
MODULATIONS = ("block", "shared")
QK_NORMS = ("rms", "layer", "none")
# Each keyword input of the transformer and the spec property that switches it on (None: always
# taken).
INPUT_FLAGS = {
    "text_emb": "needs_text", "text_mask": "needs_text", "fps": "fps_conditioning",
    "cond_aug_logsnr": "cond_aug_conditioning", "lowres_video": "lowres_conditioning",
    "guidance_weight": "guidance_weight_conditioning", "frame_cond": "frame_mask_conditioning",
    "frame_mask": "frame_mask_conditioning", "is_image": None,
}


@dataclasses.dataclass(frozen=True)
class DiTSpec(DtypeProperties):
  """Every transformer hyper-parameter, checked. Field meanings: presets.default_section()."""
  patch_size: Tuple[int, int, int]
  hidden_dim: int
  depth: int
  num_heads: int
  mlp_dim: int
  attention_layout: str
  text_conditioning: str
  text_embed_dim: int
  text_projection: str
  text_pooled_conditioning: bool
  modulation: str
  qk_norm: str
  rope_theta: float
  cond_embed_dim: int
  fps_conditioning: bool
  lowres_conditioning: str
  lowres_temporal_upsample: str
  cond_aug_conditioning: bool
  guidance_weight_conditioning: bool
  frame_mask_conditioning: bool
  attention_impl: str
  dtype: str
  param_dtype: str
  remat: str
  out_channels: int
  # Optional keys (a config without them gets the default; older configs stay valid).
  # True: the blocks run as one `nn.scan` over parameters stacked on a leading `layers` axis
  # (compile time independent of depth; the alternating layout scans spatial-temporal pairs).
  scan_blocks: bool = False

  OPTIONAL = ("scan_blocks",)

  @classmethod
  def from_config(cls, config):
    """Reads a `model` ConfigDict (or mapping); raises ValueError on a bad or missing key."""
    values = {}
    for field in dataclasses.fields(cls):
      if field.name not in config and field.name in cls.OPTIONAL:
        continue
      if field.name not in config:
        raise ValueError(f"model config (family 'dit') lacks key {field.name!r}; see "
                         "vdm_jax/models/dit/presets.py default_section()")
      value = config[field.name]
      if field.name == "patch_size":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
          raise ValueError(f"model.patch_size must be (time, height, width), e.g. (1, 2, 2); "
                           f"got {value!r}")
        value = tuple(value)
      values[field.name] = value
    spec = cls(**values)
    errors = spec.errors()
    if errors:
      raise ValueError("bad model config: " + "; ".join(errors))
    return spec

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.num_heads

  @property
  def needs_text(self) -> bool:
    return self.text_conditioning != "none" or self.text_pooled_conditioning

  @property
  def joint(self) -> bool:
    return self.text_conditioning == "joint"

  @property
  def inputs(self) -> frozenset:
    """The keyword inputs the transformer takes besides (x, logsnr, train); see
    `vdm_jax.models.family`. `is_image` is always optional."""
    return frozenset(name for name, flag in INPUT_FLAGS.items()
                     if flag is None or getattr(self, flag) not in (False, "none"))

  def block_kind(self, index: int) -> str:
    """'full', or with the alternating layout 'spatial' (even blocks) / 'temporal' (odd)."""
    if self.attention_layout == "full":
      return "full"
    return "spatial" if index % 2 == 0 else "temporal"

  def geometry_errors(self, *, frames: int, height: int, width: int) -> list[str]:
    """What keeps a video of this geometry from passing through the transformer."""
    errors = []
    for name, size, patch in zip(("frames", "height", "width"), (frames, height, width),
                                 self.patch_size):
      if size % patch:
        errors.append(f"{name}={size} is not divisible by the patch size {patch} "
                      f"(model.patch_size={self.patch_size}); change the geometry or the patch")
    return errors

  def errors(self) -> list[str]:
    """Every problem of this section, each naming its key and the fix ([] when valid)."""
    errors = []
    fail = errors.append
    if any(not isinstance(p, int) or p < 1 for p in self.patch_size):
      fail(f"model.patch_size entries must be positive ints, got {self.patch_size}")
    for key in ("hidden_dim", "depth", "num_heads", "mlp_dim", "text_embed_dim",
                "cond_embed_dim", "out_channels"):
      if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
        fail(f"model.{key} must be a positive int, got {getattr(self, key)!r}")
    if errors:
      return errors
    if self.hidden_dim % self.num_heads:
      fail(f"model.hidden_dim={self.hidden_dim} is not divisible by model.num_heads="
           f"{self.num_heads}")
    elif self.head_dim % 2 or self.head_dim < 6:
      fail(f"the head dimension hidden_dim / num_heads = {self.head_dim} must be even and >= 6: "
           "3D RoPE splits it into time, height and width rotation pairs")
    if self.cond_embed_dim % 2:
      fail(f"model.cond_embed_dim must be even (sinusoidal embedding), got "
           f"{self.cond_embed_dim}")
    if not float(self.rope_theta) > 1.0:
      fail(f"model.rope_theta must be > 1, got {self.rope_theta}")
    choices = (("attention_layout", ATTENTION_LAYOUTS), ("text_conditioning", TEXT_CONDITIONING),
               ("text_projection", TEXT_PROJECTIONS), ("modulation", MODULATIONS),
               ("qk_norm", QK_NORMS), ("lowres_conditioning", LOWRES_CONDITIONING),
               ("lowres_temporal_upsample", LOWRES_TEMPORAL_UPSAMPLE),
               ("attention_impl", ATTENTION_IMPLS), ("dtype", tuple(DTYPES)),
               ("param_dtype", tuple(DTYPES)), ("remat", REMAT))
    for key, allowed in choices:
      if getattr(self, key) not in allowed:
        fail(f"model.{key}={getattr(self, key)!r} is not one of {allowed}")
    for key in ("text_pooled_conditioning", "fps_conditioning", "cond_aug_conditioning",
                "guidance_weight_conditioning", "frame_mask_conditioning", "scan_blocks"):
      if not isinstance(getattr(self, key), bool):
        fail(f"model.{key} must be True or False, got {getattr(self, key)!r}")
    if (self.scan_blocks is True and self.attention_layout == "alternating"
        and self.depth % 2):
      fail(f"model.scan_blocks=True with the alternating layout scans (spatial, temporal) "
           f"pairs: model.depth={self.depth} must be even")
    if self.joint and self.attention_layout != "full":
      fail("model.text_conditioning='joint' attends over text and video tokens together, which "
           "needs model.attention_layout='full'; use text_conditioning='cross' with the "
           "alternating layout")
    if self.frame_mask_conditioning is True and self.lowres_conditioning != "none":
      fail(f"model.frame_mask_conditioning=True and model.lowres_conditioning="
           f"{self.lowres_conditioning!r} are two ways to give the model known frames; use one")
    return errors
