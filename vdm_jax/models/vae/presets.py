"""Autoencoder presets: paper scale (with the published parameter counts) and CPU scale.

    section = presets.paper("cogvideox")     # a `model` section dict
    presets.PAPER["wan2.1"].reference        # the reference model's exact parameter count

Reference counts were computed from the reference code's layer shapes and, where published,
checked against the stated figure (Stable Diffusion 83.65M, Wan 2.1 127M):
  - Stable Diffusion's KL-f8 VAE (CompVis / diffusers AutoencoderKL): 83,653,863;
  - Stable Video Diffusion's VAE (the same encoder, a decoder with temporal residual blocks
    after every decoder residual block and a time conv at the output; generative-models
    VideoDecoder, no quant convs): 97,742,775;
  - CogVideoX's 3-D causal VAE (diffusers AutoencoderKLCogVideoX): 215,583,907;
  - Wan 2.1's VAE (WanVAE_): 126,892,531.
Where our network differs from a reference, the preset is the closest configuration and the
difference is stated; `python -m experiments.vae.paper_scale` prints ours next to the
reference counts.
  - CogVideoX: its decoder norms are conditioned on the latents (SpatialNorm3D, 0.4M
    parameters we do not have) and its GroupNorm pools statistics over the frames of a chunk
    (ours are per frame, which keeps chunked decoding exact).
  - Wan 2.1: its decoder upsamplers halve the width and its time upsamplers run before the
    spatial ones; ours keep the width (so later blocks are a little larger).
"""
import dataclasses

import ml_collections

from vdm_jax.models.vae.spec import VAESpec


@dataclasses.dataclass(frozen=True)
class PaperPreset:
  section: dict
  reference: int          # the reference implementation's parameter count
  source: str


PAPER = {
    "sd": PaperPreset(
        dict(channels=(128, 256, 512, 512), num_res_blocks=2, latent_channels=4,
             temporal_kernel=1, time_down=(False, False, False), norm="group", norm_groups=32,
             mid_attention=True, quant_conv=True),
        83_653_863, "Stable Diffusion KL-f8 (Rombach et al. 2022)"),
    "svd": PaperPreset(
        dict(channels=(128, 256, 512, 512), num_res_blocks=2, latent_channels=4,
             temporal_kernel=1, time_down=(False, False, False), norm="group", norm_groups=32,
             mid_attention=True, quant_conv=False, temporal_decoder=True),
        97_742_775, "Stable Video Diffusion temporal decoder (Blattmann et al. 2023)"),
    "cogvideox": PaperPreset(
        dict(channels=(128, 256, 256, 512), num_res_blocks=3, latent_channels=16,
             temporal_kernel=3, time_down=(True, True, False), time_resample="pool",
             norm="group", norm_groups=32, mid_attention=False, quant_conv=False),
        215_583_907, "CogVideoX 3-D causal VAE (Yang et al. 2024)"),
    "wan2.1": PaperPreset(
        dict(channels=(96, 192, 384, 384), num_res_blocks=2, latent_channels=16,
             temporal_kernel=3, time_down=(False, True, True), time_resample="conv",
             norm="rms", mid_attention=True, quant_conv=True),
        126_892_531, "Wan 2.1 VAE (Wan team 2025)"),
}

CPU = {
    # The unit tests' autoencoder: a few thousand parameters per level.
    "tiny": dict(channels=(8, 16, 16), num_res_blocks=1, latent_channels=4, temporal_kernel=3,
                 time_down=(True, True), norm="group", norm_groups=4, mid_attention=True),
    "tiny2d": dict(channels=(8, 16, 16), num_res_blocks=1, latent_channels=4, temporal_kernel=1,
                   time_down=(False, False), norm="group", norm_groups=4, mid_attention=True),
    # Moving shapes at 32x32: 4x spatial and 4x temporal compression, 13 x 32 x 32 x 3 ->
    # 4 x 8 x 8 x 8 latents (19x fewer values); narrow at full resolution, where a CPU step
    # spends most of its time.
    "shapes": dict(channels=(16, 32, 64), num_res_blocks=1, latent_channels=8,
                   temporal_kernel=3, time_down=(True, True), norm="group", norm_groups=8,
                   mid_attention=True),
    "shapes2d": dict(channels=(16, 32, 64), num_res_blocks=1, latent_channels=8,
                     temporal_kernel=1, time_down=(False, False), norm="group", norm_groups=8,
                     mid_attention=True),
    # The per-frame autoencoder at 2x spatial compression, 13 x 32 x 32 x 3 -> 13 x 16 x 16 x 4
    # (3x fewer values): at 4x ('shapes2d') the detectors misread small shapes after decoding.
    "shapes2d_f2": dict(channels=(32, 64), num_res_blocks=1, latent_channels=4,
                        temporal_kernel=1, time_down=(False,), norm="group", norm_groups=8,
                        mid_attention=True),
}


def paper(name: str) -> dict:
  if name not in PAPER:
    raise ValueError(f"unknown autoencoder preset {name!r}; known: {tuple(PAPER)}")
  return dict(PAPER[name].section, family="vae")


def cpu(name: str) -> dict:
  if name not in CPU:
    raise ValueError(f"unknown CPU autoencoder preset {name!r}; known: {tuple(CPU)}")
  return dict(CPU[name], family="vae")


def default_section():
  """The `model` section of `model.family='vae'` with every key at its default (the
  moving-shapes 3-D causal VAE, `CPU['shapes']`)."""
  fields = {f.name: f.default for f in dataclasses.fields(VAESpec)}
  return ml_collections.ConfigDict(dict(fields, **cpu("shapes")))


def spec(section: dict) -> VAESpec:
  return VAESpec.from_config(section)
