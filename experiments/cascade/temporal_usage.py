"""Does the demo's base stage use its other frames, their order and its caption's motion words?

    JAX_PLATFORMS=cpu python -m experiments.cascade.temporal_usage --out=demo_out \
        [--steps=] [--num_clips=32] [--logsnr=2,0,-2,-4,-6] [--json=...]

On the first --num_clips test clips at the base geometry, with their captions, measures the
EMA model's denoising error (MSE of its x prediction, values in [-1, 1], averaged over 4 fixed
noise draws) at fixed noise levels (logSNR, so that runs with different schedules compare)
for four versions of the input:
  ordered   the clip as it is
  reversed  the frames in reverse order: the motion now contradicts the caption's motion word
  images    every frame alone (is_image: temporal attention masked to the frame itself)
  uncond    the clip without its caption
images > ordered says the model uses the other frames; reversed > ordered at high noise says
it knows which way the caption says the object moves; uncond > ordered that the caption helps.
"""
import json
import os
import sys

from absl import app
from absl import flags

from vdm_jax import demo  # pylint: disable=g-bad-import-order  (defines --out, --config)

_STEPS = flags.DEFINE_list("steps", [], "Base checkpoints (default: the latest).")
_NUM = flags.DEFINE_integer("num_clips", 32, "Test clips.")
_LOGSNR = flags.DEFINE_list("logsnr", ["2", "0", "-2", "-4", "-6"], "Noise levels (logSNR).")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
FLAGS = flags.FLAGS
VARIANTS = ("ordered", "reversed", "images", "uncond")


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import conditioning as cond_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion import noise as noise_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion import parameterization  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion.schedules import q_sample  # pylint: disable=g-import-not-at-top
  config = demo.demo_config(FLAGS.config, FLAGS.out, 1.0)
  c = config.cascade.stages[config.cascade.order[0]]
  workdir = cascade_lib.stage_workdir(os.path.join(FLAGS.out, "cascade"), c.stage)
  real = build.load_split_examples(c, "test", _NUM.value)
  clips = cascade_eval.real_at_geometry(real["video"], float(real["fps"][0]), c)
  x = jnp.asarray(clips.astype(np.float32) / 127.5 - 1.0)
  noise_fn = noise_lib.noise_fn_from_config(c.diffusion)
  results = {"num_clips": int(x.shape[0]), "by_step": {}}
  encoder = None
  for step in [int(s) for s in _STEPS.value] or [None]:
    stage = stage_lib.load_stage(c, workdir, step=step, text_encoder=encoder)
    encoder = stage.text_encoder
    cond, uncond = cond_lib.stage_conditioning(stage, prompts=list(real["caption"]), n=len(x))

    @jax.jit
    def x_mse(params, video, logsnr, key, inputs):
      eps = noise_lib.draw(noise_fn, key, video.shape)   # the stage's noise prior
      ls = jnp.full((video.shape[0],), logsnr)
      z = q_sample(x=video, eps=eps, logsnr=ls)
      out = stage.model.apply({"params": params}, z, ls, **inputs, train=False)   # pylint: disable=cell-var-from-loop
      pred = parameterization.to_x_and_eps(prediction=c.diffusion.prediction,
                                           model_output=out, z=z, logsnr=ls)[0]
      return jnp.mean(jnp.square(pred - video))

    rows = {}
    for logsnr in [float(v) for v in _LOGSNR.value]:
      row = {}
      for name in VARIANTS:
        video, inputs = x, dict(cond)
        if name == "reversed":
          video = x[:, ::-1]
        elif name == "images":
          inputs["is_image"] = jnp.ones((x.shape[0],), bool)
        elif name == "uncond":
          inputs = dict(uncond)
        row[name] = float(np.mean([x_mse(stage.params, video, logsnr, jax.random.key(i), inputs)
                                   for i in range(4)]))
      rows[str(logsnr)] = row
      print(f"step {stage.step} logSNR {logsnr:+.1f}: "
            + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    results["by_step"][str(stage.step)] = rows
    if _JSON.value:
      with open(_JSON.value, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
