"""Does a base stage know which way time runs? Its time-reversal residual, on real test clips.

    JAX_PLATFORMS=cpu python experiments/recipe/time_reversal.py \
        --stage=vdm_jax/assets/demo_cascade --stage=workdirs/recipe/NAME/base \
        --data_dir=workdirs/recipe/data --out=experiments/recipe/time_reversal.json

For real test clips x with their own captions, the same noise and a fixed logSNR, it compares
the x-prediction of the time-reversed input with the reversed x-prediction:

    residual = || f(rev z) - rev f(z) || / || f(z) - rev f(z) ||

0 means the network is exactly equivariant under time reversal: then, for every caption, a clip
and its reverse are equally likely samples, so "moving left" and "moving right" (and up/down)
come out with a coin-flip sign, whatever the text encoder says. The motion detectors then read
the axis right and the sign right about half of the time. A stage that reads direction has a
residual of order 1 at low SNR (its prediction of where the object goes depends on the order).

--stage takes an exported cascade (its base stage) or a training workdir (its newest EMA).
Prints a table and writes JSON.
"""
import json
import os
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

LOGSNRS = (-6.0, -2.0, 2.0)


def load_base(path: str, data_dir: str):
  """The base stage of an exported cascade, or the newest EMA of a training workdir."""
  from vdm_jax import export  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(path, export.MANIFEST)):
    stage = export.load_cascade(path).stages[0]
  else:
    stage = stage_lib.load_stage_from_workdir(path)
  stage.config.data.data_dir = data_dir
  return stage


def reversal_residual(stage, *, num_clips: int, logsnrs=LOGSNRS) -> dict:
  """{str(logSNR): residual} of `stage` on the first `num_clips` real test clips."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion import parameterization as par  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import conditioning as cond_lib  # pylint: disable=g-import-not-at-top
  c = stage.config
  build.build_dataset(c)
  real = build.load_split_examples(c, "test", num_clips)
  clips = evaluate.real_at_geometry(real["video"], float(real["fps"][0]), c)
  x = clips.astype(np.float32) / 127.5 - 1.0
  cond, _ = cond_lib.stage_conditioning(stage, prompts=list(real["caption"]), n=len(x))

  @jax.jit
  def xhat(params, z, logsnr):
    out = stage.model.apply({"params": params}, z, logsnr, **cond, train=False)
    return par.to_x_and_eps(prediction=c.diffusion.prediction, model_output=out, z=z,
                            logsnr=logsnr)[0]

  noise = np.asarray(jax.random.normal(jax.random.key(3), x.shape), np.float32)
  out = {}
  for lam in logsnrs:
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    z = alpha * x + sigma * noise
    logsnr = np.full((len(x),), lam, np.float32)
    f = np.asarray(xhat(stage.params, z, logsnr))
    f_rev = np.asarray(xhat(stage.params, z[:, ::-1], logsnr))
    out[str(lam)] = round(float(np.linalg.norm(f_rev - f[:, ::-1]) /
                                max(np.linalg.norm(f - f[:, ::-1]), 1e-12)), 4)
  return out


def main(argv):
  del argv
  flag = flags.FLAGS
  if not flag.stage:
    raise app.UsageError("pass at least one --stage")
  rows = {}
  for path in flag.stage:
    print(f"{path} ...", flush=True)
    rows[path] = reversal_residual(load_base(path, os.path.abspath(flag.data_dir)),
                                   num_clips=flag.num_clips)
  print("\n| stage | " + " | ".join(f"logSNR {l:g}" for l in LOGSNRS) + " |")
  print("|---|" + "---:|" * len(LOGSNRS))
  for path, r in rows.items():
    print(f"| {path} | " + " | ".join(f"{r[str(l)]:.4f}" for l in LOGSNRS) + " |")
  if flag.out:
    with open(flag.out, "w", encoding="utf-8") as f:
      json.dump({"num_clips": flag.num_clips, "residual": rows}, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  # Defined here, not at import: run.py imports reversal_residual and has flags of these names.
  flags.DEFINE_multi_string("stage", [], "Exported cascade dirs or training workdirs.")
  flags.DEFINE_string("data_dir", "workdirs/recipe/data", "Moving-shapes data dir (the test "
                      "split is built there if missing).")
  flags.DEFINE_integer("num_clips", 32, "Real test clips.")
  flags.DEFINE_string("out", "", "JSON output (default: print only).")
  app.run(main)
