"""The validated, hashable form of the `model` config section of a SpaceTimeUNet (family 'unet').

`UNetSpec.from_config(config.model)` checks every key before anything is traced or compiled
and says what is wrong and what to do. `validate_model_config(config.model)` is the same check
for callers that only want the error.
"""
import dataclasses
from typing import Tuple

from vdm_jax.models.spec_common import (ATTENTION_IMPLS, DTYPES, LOWRES_CONDITIONING,
                                        LOWRES_TEMPORAL_UPSAMPLE, REMAT, DtypeProperties)

TEMPORAL_MIXING = ("attention", "conv", "none", "spacetime")
TEMPORAL_POSITIONS = ("bias", "shaw")
FRAME_POSITIONS = ("none", "sinusoidal")
TEXT_BIAS_POOLINGS = ("mean", "attention")
MIXERS = ("every_block", "last_block")
# Each keyword input of the U-Net and the spec field that switches it on (None: always taken;
# needs_text covers text_cross_attention or text_pooled_conditioning).
INPUT_FLAGS = {
    "text_emb": "needs_text", "text_mask": "needs_text", "fps": "fps_conditioning",
    "cond_aug_logsnr": "cond_aug_conditioning", "lowres_video": "lowres_conditioning",
    "guidance_weight": "guidance_weight_conditioning", "frame_cond": "frame_mask_conditioning",
    "frame_mask": "frame_mask_conditioning", "is_image": None,
}



# Parameter paths of the temporal layers: ResBlock temporal convs ("temporal",
# "temporal_conv1"), "<prefix>_temporal_attn", "<prefix>_temporal_conv", "<prefix>_spacetime_attn",
# and the inputs only a video has: the frame-rate embedding "cond/fps" and "frame_position".
_TEMPORAL_MARKS = ("temporal", "spacetime")
# New video-only embeddings end in a dense layer "out" that is zeroed when inflated.
_VIDEO_EMBEDDINGS = ("cond/fps/", "frame_position/")


def is_temporal_param(path: str) -> bool:
  """Whether parameter `path` ("down0_res0/temporal/conv/kernel") belongs to a temporal layer
  or a video-only input embedding (what an image model of the same spec lacks)."""
  if path.startswith(_VIDEO_EMBEDDINGS):
    return True
  return any(mark in part for part in path.split("/") for mark in _TEMPORAL_MARKS)


def zero_when_inflated(path: str) -> bool:
  """The last layer of a video-only embedding (frame rate, frame position): zero, it adds
  nothing, so an inflated model computes its image model."""
  return path.startswith(_VIDEO_EMBEDDINGS) and "/out/" in path


@dataclasses.dataclass(frozen=True)
class UNetSpec(DtypeProperties):
  """Every U-Net hyper-parameter, checked. Field meanings: configs/default.py, `model`."""
  base_channels: int
  channel_mult: Tuple[int, ...]
  num_res_blocks: int
  spatial_attention: Tuple[bool, ...]
  temporal_mixing: Tuple[str, ...]
  temporal_conv_in_resblock: bool
  num_heads: int
  head_dim: int
  dropout: float
  num_groups: int
  rel_pos_buckets: int
  rel_pos_max_distance: int
  cond_embed_dim: int
  text_embed_dim: int
  text_cross_attention: bool
  text_pooled_conditioning: bool
  fps_conditioning: bool
  lowres_conditioning: str
  lowres_temporal_upsample: str
  cond_aug_conditioning: bool
  guidance_weight_conditioning: bool
  attention_impl: str
  dtype: str
  param_dtype: str
  remat: str
  out_channels: int
  # Optional keys (a config without them gets the default; older configs stay valid).
  frame_mask_conditioning: bool = False
  temporal_position: str = "bias"
  frame_position: str = "none"
  # The levels with text cross-attention (one bool per level); () = the levels with spatial
  # attention (beside it), which is what every config before this key meant.
  cross_attention_levels: Tuple[bool, ...] = ()
  # With temporal_conv_in_resblock: a temporal conv after each of a ResBlock's two spatial
  # convs (Make-A-Video's pseudo-3D convs) instead of after the second only.
  pseudo3d_convs: bool = False
  # Temporal attention's relative-position bias also a linear function (zero at init) of the
  # pooled caption tokens: the text can say which way time runs (see TemporalSelfAttention).
  temporal_text_bias: bool = False
  temporal_text_bias_pooling: str = "mean"
  # Where a level's mixers (spatial / cross / temporal attention or temporal conv) sit: after
  # every ResBlock, or after the last ResBlock of each level in the down and up paths only
  # (imagen-pytorch's Unet3D attends once per level).
  mixers: str = "every_block"

  OPTIONAL = ("frame_mask_conditioning", "temporal_position", "frame_position",
              "cross_attention_levels", "pseudo3d_convs", "temporal_text_bias",
              "temporal_text_bias_pooling", "mixers")

  @classmethod
  def from_config(cls, config):
    """Reads a `model` ConfigDict (or mapping); raises ValueError on a bad or missing key."""
    values = {}
    for field in dataclasses.fields(cls):
      if field.name not in config and field.name in cls.OPTIONAL:
        continue
      if field.name not in config:
        raise ValueError(f"model config lacks key {field.name!r}; see configs/default.py")
      value = config[field.name]
      if field.name in ("channel_mult", "spatial_attention", "temporal_mixing",
                        "cross_attention_levels"):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
          raise ValueError(f"model.{field.name} must be a tuple with one entry per level, "
                           f"got {value!r}")
        value = tuple(value)
      values[field.name] = value
    spec = cls(**values)
    spec._validate()
    return spec

  @property
  def num_levels(self):
    return len(self.channel_mult)

  @property
  def needs_text(self):
    return self.text_cross_attention or self.text_pooled_conditioning

  @property
  def inputs(self) -> frozenset:
    """The keyword inputs the U-Net takes besides (x, logsnr, train); see
    `vdm_jax.models.family`. `is_image` is always optional."""
    return frozenset(name for name, flag in INPUT_FLAGS.items()
                     if flag is None or getattr(self, flag) not in (False, "none"))

  def geometry_errors(self, *, frames: int, height: int, width: int) -> list[str]:
    """What keeps a video of this geometry from passing through the U-Net ([] when fine)."""
    del frames   # time is never downsampled
    down = 2 ** (self.num_levels - 1)
    if height % down or width % down:
      return [f"height x width = {height}x{width} must be divisible by {down} (the U-Net halves "
              f"space {self.num_levels - 1} times); change the size or model.channel_mult"]
    return []

  def mixes_after(self, block: int, blocks: int) -> bool:
    """Whether the mixers follow ResBlock `block` of the `blocks` in a level's path."""
    return self.mixers == "every_block" or block == blocks - 1

  def cross_attention_at(self, level) -> bool:
    """Whether level `level` has text cross-attention."""
    if not self.text_cross_attention:
      return False
    levels = self.cross_attention_levels or self.spatial_attention
    return bool(levels[level])

  def level_channels(self, level):
    return self.base_channels * self.channel_mult[level]

  def heads(self, channels):
    """(num_heads, head_dim) for attention over `channels` features.

    num_heads > 0 and head_dim > 0: fixed; head_dim == 0: channels // num_heads per head;
    num_heads == 0: channels // head_dim heads (Imagen's fixed 64-wide heads).
    """
    if self.head_dim == 0:
      return self.num_heads, channels // self.num_heads
    if self.num_heads == 0:
      return channels // self.head_dim, self.head_dim
    return self.num_heads, self.head_dim

  def errors(self) -> list[str]:
    """Every problem of this section, each naming its key and the fix ([] when valid)."""
    errors = []
    fail = errors.append
    n = self.num_levels
    if n < 1:
      return ["model.channel_mult is empty; give one multiplier per level, e.g. (1, 2, 4)"]
    if any((not isinstance(m, int)) or m < 1 for m in self.channel_mult):
      return [f"model.channel_mult entries must be positive ints, got {self.channel_mult}"]
    for key in ("spatial_attention", "temporal_mixing"):
      if len(getattr(self, key)) != n:
        fail(f"model.{key} has {len(getattr(self, key))} entries but model.channel_mult has {n} "
             "levels; give one entry per level")
    for i, mode in enumerate(self.temporal_mixing):
      if mode not in TEMPORAL_MIXING:
        fail(f"model.temporal_mixing entry {mode!r} (temporal_mixing[{i}]) is not one of "
             f"{TEMPORAL_MIXING}")
    for key in ("base_channels", "num_res_blocks", "num_groups", "cond_embed_dim",
                "text_embed_dim", "out_channels"):
      if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
        fail(f"model.{key} must be a positive int, got {getattr(self, key)!r}")
    if errors:
      return errors
    if self.base_channels % self.num_groups:
      fail(f"model.base_channels={self.base_channels} is not divisible by model.num_groups="
           f"{self.num_groups}")
    if self.cond_embed_dim % 2:
      fail(f"model.cond_embed_dim must be even (sinusoidal embedding), got "
           f"{self.cond_embed_dim}")
    if self.num_heads < 0 or self.head_dim < 0 or (self.num_heads == 0 and self.head_dim == 0):
      fail("set model.num_heads and/or model.head_dim (> 0); 0 in one of them derives it from "
           "channels")
    else:
      for level in range(n):
        if self.spatial_attention[level] or self.temporal_mixing[level] in ("attention",
                                                                            "spacetime"):
          c = self.level_channels(level)
          heads, dim = self.heads(c)
          if heads < 1 or dim < 1 or (self.head_dim == 0 and c % self.num_heads) or (
              self.num_heads == 0 and c % self.head_dim):
            fail(f"level {level} has {c} channels, which do not split into model.num_heads="
                 f"{self.num_heads} x model.head_dim={self.head_dim}")
    if not 0.0 <= float(self.dropout) < 1.0:
      fail(f"model.dropout must be in [0, 1), got {self.dropout}")
    if self.rel_pos_buckets < 4 or self.rel_pos_buckets % 2:
      fail(f"model.rel_pos_buckets must be an even number >= 4, got {self.rel_pos_buckets}")
    if self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
      fail(f"model.rel_pos_max_distance must exceed rel_pos_buckets // 4, got "
           f"{self.rel_pos_max_distance}")
    if self.cross_attention_levels and len(self.cross_attention_levels) != n:
      fail(f"model.cross_attention_levels has {len(self.cross_attention_levels)} entries for "
           f"{n} levels; give one bool per level, or () for the levels with spatial attention")
    elif any(self.cross_attention_levels) and not self.text_cross_attention:
      fail("model.cross_attention_levels marks levels but text_cross_attention=False; set it "
           "True")
    elif self.text_cross_attention and len(self.spatial_attention) == n and not any(
        self.cross_attention_at(l) for l in range(n)):
      fail("model.text_cross_attention=True but no level has cross-attention: by default it "
           "sits beside spatial attention, so enable spatial attention on a level, or name the "
           "levels in cross_attention_levels, or set text_cross_attention=False (pooled text "
           "still conditions the model)")
    if not isinstance(self.temporal_text_bias, bool):
      fail(f"model.temporal_text_bias must be True or False, got {self.temporal_text_bias!r}")
    elif self.temporal_text_bias and "attention" not in self.temporal_mixing:
      fail("model.temporal_text_bias=True conditions temporal attention's position bias on the "
           "text: it needs a level with temporal_mixing='attention'")
    choices = (("lowres_conditioning", LOWRES_CONDITIONING),
               ("lowres_temporal_upsample", LOWRES_TEMPORAL_UPSAMPLE),
               ("attention_impl", ATTENTION_IMPLS), ("dtype", tuple(DTYPES)),
               ("param_dtype", tuple(DTYPES)), ("remat", REMAT),
               ("temporal_position", TEMPORAL_POSITIONS),
               ("temporal_text_bias_pooling", TEXT_BIAS_POOLINGS),
               ("frame_position", FRAME_POSITIONS), ("mixers", MIXERS))
    for key, allowed in choices:
      if getattr(self, key) not in allowed:
        fail(f"model.{key}={getattr(self, key)!r} is not one of {allowed}")
    if not isinstance(self.pseudo3d_convs, bool):
      fail(f"model.pseudo3d_convs must be True or False, got {self.pseudo3d_convs!r}")
    elif self.pseudo3d_convs and not self.temporal_conv_in_resblock:
      fail("model.pseudo3d_convs=True places the ResBlocks' temporal convs after each spatial "
           "conv: it needs model.temporal_conv_in_resblock=True")
    if not isinstance(self.frame_mask_conditioning, bool):
      fail(f"model.frame_mask_conditioning must be True or False, got "
           f"{self.frame_mask_conditioning!r}")
    elif self.frame_mask_conditioning and self.lowres_conditioning != "none":
      fail(f"model.frame_mask_conditioning=True and model.lowres_conditioning="
           f"{self.lowres_conditioning!r} are two ways to give the model known frames; use one "
           "(a masked-interpolation temporal SR stage sets lowres_conditioning='none')")
    return errors

  def _validate(self):
    errors = self.errors()
    if errors:
      raise ValueError("bad model config: " + "; ".join(errors))
