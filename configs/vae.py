"""The video autoencoders (model.family='vae') on the demo's moving shapes.

    python -m vdm_jax.main --mode=train --config=configs/vae.py --workdir=runs/vae3d
    python -m vdm_jax.main --mode=train --config=configs/vae.py:kind=2d --workdir=runs/vae2d
    python -m vdm_jax.main --mode=train --config=configs/vae.py:kind=temporal_decoder \\
        --config.train.init_from=runs/vae2d --workdir=runs/vae2d_td

13-frame 32x32 clips at 8 fps cut from the demo's data (configs/demo.py: the same 16-frame
clips, vocabulary and held-out split), so the latents are those a latent demo base would
diffuse. Variants (comma-separated):
  kind=3d                the 3-D causal VAE (vae presets 'shapes'): 4x in space and in time,
                         13 x 32 x 32 x 3 -> 4 x 8 x 8 x 8 latents (19x fewer values)
  kind=2d                the per-frame KL autoencoder ('shapes2d'): 4x in space only
  kind=temporal_decoder  Video LDM: the 2-D autoencoder's decoder with temporal residual blocks
                         added, only those trained (train.trainable='temporal'); start it from a
                         trained kind=2d run with train.init_from
  factor=4|2             spatial compression of kind=2d / temporal_decoder (default 4):
                         2 is 'shapes2d_f2', 13 x 32 x 32 x 3 -> 13 x 16 x 16 x 4 latents
  images=K               joint training: K extra single frames per clip, encoded as one-frame
                         videos (the 3-D VAE compresses a first frame in space only)
  adversarial=W          adversarial training: a 3-D patch discriminator (model.discriminator
                         (32, 64, 128)), hinge losses with generator weight W, R1 weight 1.0,
                         from step adv_start=N (default 0: for fine-tuning a trained run
                         with train.init_from; from scratch, let the reconstruction come first)
The objective (vdm_jax/models/vae/objective.py): L1 reconstruction + autoencoder.kl_weight *
KL per input value.
"""
import ml_collections

from configs import default
from configs import demo
from vdm_jax import config_utils
from vdm_jax.models.vae import presets

KINDS = {"3d": "shapes", "2d": "shapes2d", "temporal_decoder": "shapes2d"}


def get_config(arg=None):
  v = config_utils.parse_variant(arg)
  kind = v.pop("kind", "3d")
  images = int(v.pop("images", 0))
  factor = int(v.pop("factor", 4))
  adversarial = float(v.pop("adversarial", 0.0))
  adv_start = int(v.pop("adv_start", 0))
  factor_ok = factor == 4 or (factor == 2 and kind != "3d")
  if v or kind not in KINDS or images < 0 or not factor_ok or adversarial < 0 or adv_start < 0:
    raise ValueError(f"configs/vae.py takes kind={tuple(KINDS)}, images=K >= 0, factor=4|2 "
                     f"(2: kind=2d or temporal_decoder), adversarial=W >= 0 and adv_start=N "
                     f">= 0; got {arg!r}")
  c = default.get_config()
  c.frames, c.height, c.width, c.fps = 13, 32, 32, 8.0
  c.model = presets.default_section()
  c.model.update(presets.cpu(KINDS[kind] + ("_f2" if factor == 2 else "")))
  if kind == "temporal_decoder":
    c.model.temporal_decoder = True
    c.model.quant_conv = True
    c.train.trainable = "temporal"
  c.autoencoder = ml_collections.ConfigDict(dict(
      reconstruction="l1", kl_weight=1e-6, sample_posterior=True))
  if adversarial > 0:
    c.model.discriminator = (32, 64, 128)
    c.autoencoder.update(adversarial_weight=adversarial, adversarial_start=adv_start,
                         r1_weight=1.0)
  d = c.data
  d.data_dir = "demo_out/data"
  d.num_train_examples, d.num_eval_examples = 4096, 64
  d.source_frames, d.source_resolution, d.source_fps = 16, 32, 8.0
  d.two_object_prob = 0.0
  for name, words in demo.VOCABULARY.items():
    d.vocabulary[name] = words
  d.images_per_video = images
  # Trained on 9 x 16 x 16 windows (1 + 2 x 4 frames; the networks are convolutional, the
  # middle attention sees 4 x 4 latents instead of 8 x 8), evaluated on whole 13 x 32 x 32
  # clips: a quarter of the pixels per step, which on a CPU is a quarter of the time.
  d.crop_frames, d.crop_height, d.crop_width = 9, 16, 16
  t = c.train
  t.batch_size = 8
  t.num_steps = 4000
  t.lr = 1e-3
  t.warmup_steps = 100
  t.ema_decay = 0.999
  t.log_every = 50
  t.checkpoint_every = 500
  t.keep_every = 1000
  c.eval.metrics = ("moving_shapes",)
  return c
