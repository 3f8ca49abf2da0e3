"""Does the trained interpolation stage read its known frames? One denoising step, with and
without them.

    JAX_PLATFORMS=cpu python -m experiments.interpolation.denoise_check [--workdir=workdirs/interp]

Loads the stage that experiments/interpolation/run.py trained, noises 8 held-out clips to a
few logSNR levels and prints the MSE of the model's x-prediction at the known frame positions
(0, 2, ..., 14) and at the others, once with those frames given (mask every 2nd frame, clean:
augmentation level 20) and once with none given. A model that uses the known frames predicts
them (nearly) exactly when they are given.
"""
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.interpolation import run   # defines --workdir (run.py's workdir)

FLAGS = flags.FLAGS


def main(argv):
  del argv
  from vdm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(FLAGS.workdir)
  config = run.make_config(workdir, 0)
  stage = stage_lib.load_stage(config, os.path.join(workdir, "train"), devices=jax.devices()[:1])
  real = build.load_split_examples(config, "test", 8)
  x = jnp.asarray(real["video"].astype(np.float32) / 127.5 - 1.0)     # [8, 16, 16, 16, 3]
  emb, text_mask = stage.text_encoder.encode(list(real["caption"]))
  n, t = x.shape[:2]
  known = np.zeros((n, t), bool)
  known[:, ::2] = True
  for logsnr in (-2.0, 0.0, 3.0):
    level = jnp.full((n,), logsnr)
    z = diffusion.q_sample(x=x, eps=jax.random.normal(jax.random.key(0), x.shape), logsnr=level)
    for name, mask in (("known frames given", known), ("none given", np.zeros_like(known))):
      v = stage.model.apply({"params": stage.params}, z, level, text_emb=emb,
                            text_mask=text_mask, fps=jnp.full((n,), float(config.fps)),
                            cond_aug_logsnr=jnp.full((n,), 20.0),
                            frame_cond=x * mask[..., None, None, None], frame_mask=mask)
      err = np.asarray((diffusion.predict_x_from_v(z=z, v=v, logsnr=level) - x) ** 2)
      print(f"logSNR {logsnr:+.0f}  {name:18s}  x-pred MSE at known positions "
            f"{err[known].mean():.4f}, at the others {err[~known].mean():.4f}")


if __name__ == "__main__":
  app.run(main)
