"""The autoencoder's config section (`model.family = "vae"`), read and checked into a frozen spec.

One network covers the three autoencoders of the latent path:
  - a per-frame 2-D KL autoencoder (Stable Diffusion's): temporal_kernel=1, no time_down;
  - the same with Video LDM's temporal decoder: temporal_decoder=True (temporal residual blocks
    mixed into the frozen 2-D decoder by learned blend factors);
  - a 3-D causal VAE (CogVideoX's, Wan 2.1's): temporal_kernel=3 (causal in time) and
    time_down set at the levels that halve time (T = 1 + 4k frames -> 1 + k latents when two
    levels do).
"""
import dataclasses
from typing import Any, Mapping

from vdm_jax.models.vae.layers import NORMS
from vdm_jax.models.spec_common import DTYPES, DtypeProperties
TIME_RESAMPLE = ("conv", "pool")
KEYS = ("family", "channels", "num_res_blocks", "latent_channels", "image_channels",
        "temporal_kernel", "time_down", "norm", "norm_groups", "mid_attention", "quant_conv",
        "temporal_decoder", "time_resample", "discriminator", "dropout", "dtype", "param_dtype", "logvar_min", "logvar_max")


@dataclasses.dataclass(frozen=True)
class VAESpec(DtypeProperties):
  channels: tuple = (32, 64, 64)           # width of each level; len - 1 spatial halvings
  num_res_blocks: int = 1                  # per encoder level (the decoder has one more)
  latent_channels: int = 4
  image_channels: int = 3
  temporal_kernel: int = 1                 # 1: per-frame convs; 3: causal 3-D convs
  time_down: tuple = (False, False)        # per level transition: halve the frames after the first
  norm: str = "group"                      # 'group' (per-frame GroupNorm) or 'rms' (per pixel)
  norm_groups: int = 32
  mid_attention: bool = True               # per-frame self-attention in the middle blocks
  quant_conv: bool = True                  # 1x1 convs on the moments and on z (Stable Diffusion)
  temporal_decoder: bool = False           # Video LDM's temporal layers in the decoder
  time_resample: str = "conv"              # 'conv': learned causal time convs (Wan 2.1);
                                           # 'pool': average / repeat, no parameters (CogVideoX)
  discriminator: tuple = ()                # widths of the 3-D patch discriminator trained
                                           # with it (discriminator.py); () = none
  dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  logvar_min: float = -30.0
  logvar_max: float = 20.0

  @classmethod
  def from_config(cls, m: Mapping[str, Any]) -> "VAESpec":
    unknown = sorted(set(m.keys()) - set(KEYS))
    if unknown:
      raise ValueError(f"model.{unknown[0]} is not a key of the autoencoder's model section "
                       f"(known: {', '.join(KEYS[1:])})")
    kw = {k: m[k] for k in KEYS[1:] if k in m}
    for key in ("channels", "time_down", "discriminator"):
      if key in kw:
        kw[key] = tuple(kw[key])
    spec = cls(**kw)
    problems = spec.errors()
    if problems:
      raise ValueError(problems[0])
    return spec

  def errors(self) -> list[str]:
    out = []
    if not self.channels or any(int(c) <= 0 for c in self.channels):
      out.append(f"model.channels={self.channels} must be positive widths, one per level")
    if len(self.time_down) != max(len(self.channels) - 1, 0):
      out.append(f"model.time_down={self.time_down} needs one entry per level transition "
                 f"({len(self.channels) - 1} for model.channels={self.channels})")
    if self.temporal_kernel not in (1, 3):
      out.append(f"model.temporal_kernel={self.temporal_kernel} must be 1 (per-frame) or 3 "
                 "(causal 3-D)")
    if any(self.time_down) and self.temporal_kernel == 1:
      out.append("model.time_down compresses time, which a per-frame autoencoder "
                 "(temporal_kernel=1) cannot; set model.temporal_kernel=3")
    if self.temporal_decoder and self.temporal_kernel != 1:
      out.append("model.temporal_decoder adds temporal layers to a per-frame decoder; a 3-D "
                 "VAE (temporal_kernel=3) has them already")
    if self.time_resample not in TIME_RESAMPLE:
      out.append(f"model.time_resample={self.time_resample!r} is not one of {TIME_RESAMPLE}")
    if self.norm not in NORMS:
      out.append(f"model.norm={self.norm!r} is not one of {NORMS}")
    if self.norm == "group" and any(int(c) % self.norm_groups for c in self.channels):
      out.append(f"model.norm_groups={self.norm_groups} must divide every width of "
                 f"model.channels={self.channels}")
    if any(int(c) <= 0 for c in self.discriminator):
      out.append(f"model.discriminator={self.discriminator} must be positive widths (or () for "
                 "no discriminator)")
    if self.num_res_blocks < 1 or self.latent_channels < 1:
      out.append("model.num_res_blocks and model.latent_channels must be at least 1")
    for key in ("dtype", "param_dtype"):
      if getattr(self, key) not in DTYPES:
        out.append(f"model.{key}={getattr(self, key)!r} is not one of {tuple(DTYPES)}")
    return out

  @property
  def inputs(self) -> frozenset:
    """The conditioning inputs it takes besides the video: none (see models/family.py)."""
    return frozenset()

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.channels) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(d) for d in self.time_down)

  def geometry_errors(self, *, frames: int, height: int, width: int) -> list[str]:
    """What keeps a video of this geometry from passing through the autoencoder."""
    out, s, f = [], self.spatial_factor, self.temporal_factor
    if height % s or width % s:
      out.append(f"height {height} and width {width} must be multiples of the spatial "
                 f"compression {s} (2 ** (len(model.channels) - 1))")
    if f > 1 and (frames - 1) % f:
      out.append(f"{frames} frames: a 3-D VAE with temporal compression {f} takes 1 + {f}k "
                 f"frames (the first frame is compressed in space only), e.g. {1 + f * max(1, (frames - 1) // f)}")
    if frames < 1:
      out.append(f"{frames} frames: need at least one")
    return out

  def latent_shape(self, *, frames: int, height: int, width: int) -> tuple:
    """(T', H', W', C') of the latents of a [T, H, W] video."""
    f, s = self.temporal_factor, self.spatial_factor
    return (1 + (frames - 1) // f, height // s, width // s, self.latent_channels)

  def frames_for_latents(self, latent_frames: int) -> int:
    return 1 + (latent_frames - 1) * self.temporal_factor
