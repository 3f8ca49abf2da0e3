"""Caption accuracy of the demo cascade against the base stage's training steps.

    JAX_PLATFORMS=cpu python -m experiments.cascade.budget --out=demo_out \
        [--steps=400,800,1200] [--num_videos=32] [--json=experiments/cascade/budget.json]

For every kept checkpoint of the base stage in `<out>/cascade/base` (configs/demo.py keeps one
every 400 steps), runs the whole demo cascade (the SR stages at their latest checkpoints) on
the same held-out test prompts and reads every stage's videos with the detectors. The base
carries the prompt, so this is how the demo's accuracy grows with its budget.
"""
import json
import os
import re
import sys

from absl import app
from absl import flags

from vdm_jax import demo  # pylint: disable=g-bad-import-order  (defines --out, --config, --num_videos)

_STEPS = flags.DEFINE_list("steps", [], "Base steps to evaluate (default: every checkpoint).")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  config = demo.demo_config(FLAGS.config, FLAGS.out, 1.0)
  root = os.path.join(FLAGS.out, "cascade")
  ckpts = os.path.join(cascade_lib.stage_workdir(root, "base"), "checkpoints")
  steps = [int(s) for s in _STEPS.value] or sorted(
      int(n) for n in os.listdir(ckpts) if re.fullmatch(r"\d+", n))
  results = {"by_base_step": {}}
  cascade = None
  for step in steps:
    if cascade is None:
      cascade = cascade_lib.Cascade.from_config(config, root, steps={"base": step})
    else:  # a new base; the SR stages (and their compiled samplers) stay
      base = stage_lib.load_stage(cascade.stages[0].config, cascade_lib.stage_workdir(root, "base"),
                                  step=step, text_encoder=cascade.stages[0].text_encoder)
      cascade = cascade.with_stage("base", base, cascade.settings[0])
    scores = cascade_eval.score_held_out(config, cascade, num_videos=FLAGS.num_videos or 32,
                                         batch_size=demo.SAMPLE_BATCH)[0]
    results.update(num_videos=scores["num_videos"], num_held_out=scores["num_held_out"])
    results["by_base_step"][step] = scores
    acc = scores["stages"][cascade.names[-1]]["caption_accuracy"]
    print(f"base step {step}: final-stage accuracy " + ", ".join(
        f"{k} {v:.2f}" for k, v in acc.items() if isinstance(v, float))
          + f"; FVD {scores.get('fvd')}", flush=True)
    if _JSON.value:   # after every step: an interrupted run keeps what it measured
      with open(_JSON.value, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
