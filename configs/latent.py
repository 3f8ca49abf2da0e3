"""A latent text-to-video base on the demo's moving shapes: the U-Net diffuses an autoencoder's
latents (Video LDM, Sora, CogVideoX), and its samples are decoded at the end.

    python -m vdm_jax.main --mode=build_data --config=configs/vae.py          # the clips
    python -m vdm_jax.main --mode=train --config=configs/vae.py --workdir=runs/vae3d
    python -m vdm_jax.main --mode=build_latents --config=configs/latent.py    # encoded once
    python -m vdm_jax.main --mode=train --config=configs/latent.py --workdir=runs/latent_base
    python -m vdm_jax.main --mode=sample --config=configs/latent.py --workdir=runs/latent_base \\
        --prompt="a large red circle moving right quickly on a black background"
    python -m vdm_jax.main --mode=eval --config=configs/latent.py --workdir=runs/latent_base

The clips are configs/vae.py's (13 x 32 x 32 at 8 fps, the demo's data and vocabulary), encoded
once by the autoencoder trained with it (`latent.autoencoder`, default runs/vae3d) into
`data.latents` (default <autoencoder>/latents). The stage's frames, height, width and channels
are the latent shape, so the U-Net is the demo base's (configs/demo.py) unchanged but for its
input and output channels: kind=3d (the 3-D causal VAE) diffuses 4 x 8 x 8 x 8 latents,
kind=2d (per frame) 13 x 8 x 8 x 8. Samples are normalized latents (sample.clip='none'); the
autoencoder decodes them to 13 x 32 x 32 videos, which `--mode=eval` scores like a pixel
stage's (detectors, FVD against the real test clips).

Variants (comma-separated):
  kind=3d | 2d | temporal_decoder   which configs/vae.py autoencoder (its latent shape)
  factor=4 | 2                      its spatial compression (2: per-frame kinds only,
                                    13 x 16 x 16 x 4 latents)
  autoencoder=DIR                   its training workdir or exported stage directory
  latents=DIR                       the latent dataset (default DIR/latents of the autoencoder)
  space=pixel                       the comparison: the same U-Net, data, prompts and
                                    training settings on the clips themselves (13 x 32 x 32 x 3,
                                    no autoencoder; experiments/latent/compare.py)
  scale=tiny                        a few-second CPU smoke run (tiny U-Net, 50 steps)
"""
from configs import demo
from configs import vae
from vdm_jax import config_utils
from vdm_jax.models.vae import presets as vae_presets

DEFAULT_AUTOENCODER = {"3d": "runs/vae3d", "2d": "runs/vae2d",
                       "temporal_decoder": "runs/vae2d_td"}


def get_config(arg=None):
  v = config_utils.parse_variant(arg)
  kind = v.pop("kind", "3d")
  scale = v.pop("scale", "cpu")
  if kind not in vae.KINDS or scale not in ("cpu", "tiny"):
    raise ValueError(f"configs/latent.py takes kind={tuple(vae.KINDS)} and scale=cpu|tiny; "
                     f"got {arg!r}")
  factor = v.pop("factor", "4")
  autoencoder = v.pop("autoencoder", DEFAULT_AUTOENCODER[kind] + ("_f2" if factor == "2" else ""))
  latents = v.pop("latents", f"{autoencoder}/latents")
  space = v.pop("space", "latent")
  if space not in ("latent", "pixel"):
    raise ValueError(f"configs/latent.py: space={space!r} must be latent or pixel")
  if v:
    raise ValueError(f"configs/latent.py: unknown variant keys {sorted(v)} in {arg!r}")
  pixels = vae.get_config(f"kind={kind},factor={factor}")   # the autoencoder's clips and data
  base = demo.get_config().cascade.stages["base"]
  c = base.copy_and_resolve_references()
  c.data = pixels.data.copy_and_resolve_references()
  d = c.data
  d.crop_frames = d.crop_height = d.crop_width = 0
  d.images_per_video = 0
  c.fps = pixels.fps
  c.text.store_path = ""
  if space == "pixel":                   # the clips themselves, as the demo base diffuses them
    c.frames, c.height, c.width, c.channels = (pixels.frames, pixels.height, pixels.width,
                                               pixels.channels)
  else:
    d.latents = latents
    c.latent.autoencoder = autoencoder
    spec = vae_presets.spec(pixels.model.to_dict())
    c.frames, c.height, c.width, c.channels = spec.latent_shape(
        frames=pixels.frames, height=pixels.height, width=pixels.width)
    c.sample.clip = "none"               # normalized latents are not bounded in [-1, 1]
  c.model.out_channels = c.channels
  t = c.train
  t.sample_every = 0
  t.log_every = 50
  t.checkpoint_every = 200
  c.eval.num_videos = 32
  if scale == "tiny":
    m = c.model
    m.base_channels, m.channel_mult, m.spatial_attention = 16, (1, 2), (False, True)
    m.temporal_mixing = ("attention", "attention")
    m.num_heads, m.head_dim, m.num_groups, m.cond_embed_dim = 2, 16, 4, 64
    t.num_steps, t.warmup_steps, t.batch_size = 50, 10, 8
    c.sample.num_steps = 8
    c.eval.num_videos = 8
  return c
