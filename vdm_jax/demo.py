"""`make demo`: build procedural data, train a small text-to-video model, sample and evaluate it.

    python -m vdm_jax.demo [--out=demo_out] [--steps=N] [--config=configs/demo.py]

Writes, under --out:
  data/          the moving_shapes dataset (tfds, array_record)
  train/         checkpoints, metrics.jsonl, TensorBoard events, config.json
  samples/       one GIF + MP4 per demo prompt (prompts.txt lists them)
  eval/          eval.json (caption accuracy, consistency, FVD) and index.html, a gallery of
                 held-out prompts: generated beside real
Each step is the library call that the matching `python -m vdm_jax.main --mode=...` makes, so
the demo is also the smoke test of the command line's path. Re-running resumes training from
the last checkpoint.
"""
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_OUT = flags.DEFINE_string("out", "demo_out", "Output directory.")
_STEPS = flags.DEFINE_integer("steps", None, "Train steps (default: the config's).")
_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Config file (a get_config module).")


def _load_config(path: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)  # so configs/*.py can import each other
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv):
  del argv
  from vdm_jax import config_utils, sampling  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = _load_config(_CONFIG.value)
  out = _OUT.value
  config.data.data_dir = os.path.join(out, "data")
  if _STEPS.value is not None:
    config.train.num_steps = int(_STEPS.value)
    config.train.checkpoint_every = max(1, min(int(config.train.checkpoint_every),
                                               int(_STEPS.value)))
  config_utils.validate_config(config)
  timings = {}

  def stage(name, fn):
    print(f"\n== {name} ==", flush=True)
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    print(f"== {name}: {timings[name]:.0f}s ==", flush=True)
    return result

  workdir = os.path.join(out, "train")
  stage("build data", lambda: build.build_dataset(config))
  stage("train", lambda: loop.train_and_evaluate(config, workdir))
  stage("sample", lambda: sampling.sample_from_workdir(
      config, workdir, list(config.sample.prompts), out_dir=os.path.join(out, "samples")))
  results = stage("evaluate", lambda: sampling.evaluate_workdir(
      config, workdir, out_dir=os.path.join(out, "eval")))
  acc = results.get("caption_accuracy", {})
  print("\nDemo finished in " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
  print(f"Caption accuracy on {results.get('num_videos')} held-out prompts: "
        + ", ".join(f"{k} {v:.2f}" for k, v in acc.items() if isinstance(v, float)))
  if results.get("fvd") is not None:
    print(f"FVD (I3D, {results.get('fvd_num_videos')} videos): {results['fvd']:.1f}")
  print(f"Samples: {os.path.join(out, 'samples')}   Gallery: {os.path.join(out, 'eval', 'index.html')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
