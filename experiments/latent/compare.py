"""A latent text-to-video base against the pixel base at equal training FLOPs (issue: latent video).

    JAX_PLATFORMS=cpu python -m experiments.latent.compare --root=latent_compare \\
        --variant=kind=2d,factor=2,autoencoder=runs/vae2d_f2 --pixel_steps=4000 \\
        [--data_dir=demo_out/data] [--arms=pixel,latent] [--phase=all|train|eval|report]

Both arms are `configs/latent.py` with the same variant: the demo base's U-Net, data (the
autoencoder's 13 x 32 x 32 clips of moving shapes), prompts, batch and optimizer. `latent`
diffuses the autoencoder's normalized latents and decodes its samples; `pixel` (`space=pixel`)
diffuses the clips. XLA's FLOP count of each arm's train step (the step lowered on abstract
inputs, nothing allocated) sets the latent arm's steps: pixel_steps x pixel FLOPs / latent FLOPs,
so both spend the same training FLOPs. The latents are encoded once (`--mode=build_latents`);
that one-off cost is reported beside the table, as is the autoencoder's own training (its
workdir's metrics), which the latent arm also needs.

Each arm trains through the CLI (`--mode=train`, resumable: a rerun goes on where it stopped)
at a constant learning rate after warm-up, so that a later rerun with a larger --pixel_steps
extends both arms without changing what they did so far (the table gets a row per budget),
and is evaluated by `--mode=eval` on the first --num_videos held-out test prompts (detectors,
temporal consistency, FVD against the real clips, seconds per sampled video; the latent arm's
videos are decoded by its autoencoder, and the decode is part of its sampling time). The arms
can run as two processes side by side (`--arms=pixel` and `--arms=latent`, one core each);
`--phase=report` then prints the table and writes <root>/results.json. "train CPU s" is the
CPU time of the training commands this script ran (a training stopped by SIGTERM, which saves a
checkpoint, is resumed by the next call and counted in full; one killed outright loses the time
since its last checkpoint); "s/step" is the median wall seconds per
step of the training log, compilation left out, which holds either way.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys

from experiments.benchmarks import common
from vdm_jax import demo

CONFIG = "configs/latent.py"
ARMS = ("pixel", "latent")


def _cpu_children() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def arm_variant(variant: str, arm: str) -> str:
  return variant + (",space=pixel" if arm == "pixel" else "")


def step_flops(variant: str, arm: str, data_dir: str) -> float:
  """XLA's FLOP count of one train step of the arm (lowered on abstract inputs)."""
  from configs import latent  # pylint: disable=g-import-not-at-top
  from experiments.benchmarks import common  # pylint: disable=g-import-not-at-top
  from experiments.benchmarks import train_step  # pylint: disable=g-import-not-at-top
  config = latent.get_config(arm_variant(variant, arm))
  config.data.data_dir = data_dir
  bench = train_step.TrainStepBench(config)
  flops = common.lowered_flops(bench.lower(int(config.train.batch_size)))
  if not flops:
    raise RuntimeError(f"XLA gave no FLOP count for the {arm} arm's train step")
  return flops


class Comparison:
  """The state of one root: per arm a JSON file (so two processes can run the two arms)."""

  def __init__(self, args):
    self.args = args
    self.root = os.path.abspath(args.root)
    os.makedirs(self.root, exist_ok=True)

  def _state_path(self, arm):
    return os.path.join(self.root, f"{arm}.json")

  def state(self, arm) -> dict:
    path = self._state_path(arm)
    return json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}

  def save(self, arm, state):
    path = self._state_path(arm)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(state, f, indent=2)
    os.replace(path + ".tmp", path)

  def cli(self, mode, arm, extra=()):
    a = self.args
    cmd = [sys.executable, "-m", "vdm_jax.main", f"--mode={mode}",
           f"--config={CONFIG}:{arm_variant(a.variant, arm)}",
           f"--config.data.data_dir={a.data_dir}"] + list(extra)
    print("$", " ".join(cmd[2:]), flush=True)
    before = _cpu_children()
    subprocess.run(cmd, check=True)
    return _cpu_children() - before

  def flops(self) -> dict:
    """Both arms' FLOPs per train step, computed once (root/flops.json)."""
    path = os.path.join(self.root, "flops.json")
    if not os.path.exists(path):
      out = {arm: step_flops(self.args.variant, arm, self.args.data_dir) for arm in ARMS}
      with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    return json.load(open(path, encoding="utf-8"))

  def steps(self, arm) -> int:
    f = self.flops()
    return (self.args.pixel_steps if arm == "pixel"
            else int(round(self.args.pixel_steps * f["pixel"] / f["latent"])))

  def train(self, arm):
    s = self.state(arm)
    if arm == "latent" and "encode_cpu_s" not in s:
      s["encode_cpu_s"] = self.cli("build_latents", arm)
      self.save(arm, s)
    steps = self.steps(arm)
    trained = s.setdefault("trained", {})          # {steps: CPU s of training so far}
    if str(steps) not in trained:
      workdir = os.path.join(self.root, arm)
      so_far = max([0.0] + list(trained.values()))
      cpu_s = self.cli("train", arm, [f"--workdir={workdir}", f"--config.train.num_steps={steps}",
                                      "--config.train.lr_schedule=constant",
                                      f"--config.train.checkpoint_every={min(steps, 500)}"])
      reached = demo.latest_step(workdir)
      s["unfinished_cpu_s"] = s.get("unfinished_cpu_s", 0.0) + cpu_s
      if reached < steps:    # stopped early (SIGTERM: a checkpoint, a clean exit): not done
        self.save(arm, s)
        sys.exit(f"{arm}: training stopped at step {reached} of {steps}; rerun to resume.")
      trained[str(steps)] = so_far + s.pop("unfinished_cpu_s")
      self.save(arm, s)

  def evaluate(self, arm):
    """Evaluates the arm's checkpoint at this --pixel_steps budget (root/eval/ARM/STEPS)."""
    steps = self.steps(arm)
    out = os.path.join(self.root, "eval", arm, str(steps))
    if not os.path.exists(os.path.join(out, "eval.json")):
      self.cli("eval", arm, [f"--workdir={os.path.join(self.root, arm)}", f"--out={out}",
                             f"--num_videos={self.args.num_videos}"])

  def report(self) -> dict:
    flops = self.flops()
    results = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible",
               "variant": self.args.variant, "pixel_steps": self.args.pixel_steps,
               "flops_per_step": flops, "arms": {}}
    for arm in ARMS:
      s = self.state(arm)
      rows = []
      for steps, cpu_s in sorted(s.get("trained", {}).items(), key=lambda kv: int(kv[0])):
        path = os.path.join(self.root, "eval", arm, steps, "eval.json")
        if not os.path.exists(path):
          print(f"{arm} at {steps} steps: not evaluated yet", flush=True)
          continue
        r = json.load(open(path, encoding="utf-8"))
        r.update(steps=int(steps), train_cpu_s=cpu_s, train_tflop=flops[arm] * int(steps) / 1e12,
                 train_s_per_step=common.training_log_cost(
                     os.path.join(self.root, arm)).get("train_s_per_step"))
        rows.append(r)
      results["arms"][arm] = {"encode_cpu_s": s.get("encode_cpu_s"), "rows": rows}
    with open(os.path.join(self.root, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    print_table(results)
    return results


def print_table(results):
  keys = ("color", "shape", "size", "motion", "all")
  print("| arm | steps | TFLOP/step | train TFLOP | train CPU s | s/step | "
        + " | ".join(keys) + " | FVD | s/video |")
  print("|---|---|---|---|---|---|" + "---|" * (len(keys) + 2))
  rows = [(arm, r) for arm, a in results["arms"].items() for r in a["rows"]]
  for arm, r in sorted(rows, key=lambda ar: (ar[1]["train_tflop"], ar[0])):
    acc = r.get("caption_accuracy", {})
    print(f"| {arm} | {r['steps']} | {results['flops_per_step'][arm] / 1e12:.4f} | "
          f"{r['train_tflop']:.0f} | {r['train_cpu_s']:.0f} | "
          f"{r.get('train_s_per_step') or float('nan'):.3f} | "
          + " | ".join(f"{acc.get(k, float('nan')):.2f}" for k in keys)
          + f" | {r.get('fvd', float('nan')):.0f} | {r.get('seconds_per_video', 0):.3f} |")
  latent = results["arms"].get("latent", {})
  if latent.get("encode_cpu_s") is not None:
    print(f"latent arm, one-off: encoding the dataset {latent['encode_cpu_s']:.0f} CPU s "
          "(not in the train columns; the autoencoder's own training neither)")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="latent_compare")
  parser.add_argument("--variant", default="kind=2d,factor=2",
                      help="configs/latent.py variant both arms share (kind, factor, "
                      "autoencoder, latents, scale)")
  parser.add_argument("--data_dir", default="demo_out/data")
  parser.add_argument("--pixel_steps", type=int, default=4000)
  parser.add_argument("--num_videos", type=int, default=64)
  parser.add_argument("--arms", default="pixel,latent")
  parser.add_argument("--phase", choices=("all", "train", "eval", "report"), default="all")
  args = parser.parse_args()
  arms = [a for a in args.arms.split(",") if a]
  bad = [a for a in arms if a not in ARMS]
  if bad:
    parser.error(f"--arms: {bad} not in {ARMS}")
  comparison = Comparison(args)
  for arm in arms:
    if args.phase in ("all", "train"):
      comparison.train(arm)
    if args.phase in ("all", "eval"):
      comparison.evaluate(arm)
  if args.phase in ("all", "report"):
    comparison.report()


if __name__ == "__main__":
  main()
