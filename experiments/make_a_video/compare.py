"""Make-A-Video on moving shapes at equal training compute (configs/make_a_video.py, CPU scale).

    JAX_PLATFORMS=cpu python -m experiments.make_a_video.compare --root=mav_compare \
        --budget_cpu_s=2600 [--image_share=0.4 --finetune_share=0.2] [--num_videos=64]

Three arms, each given the same CPU seconds of training (user + system time of the training
processes, compilation included; the persistent compilation cache keeps recompiles out):

  a  text-to-image (image_share of the budget), --mode=inflate, then the temporal layers only
     on clips whose captions are ignored (the rest)                       [Make-A-Video]
  b  as (a), but the last finetune_share of the budget trains every layer on captioned clips
     (train.init_from the motion run)                                      [+ step three]
  c  the same video U-Net from scratch on captioned clips                  [the baseline]

Two more rows say where the arms start: the text-to-image model read on the test captions as
one-frame images (colour, shape and size are its to give), and the inflated video model before
any video training (the image model frame by frame). --motion_lr sets the learning rate of the
temporal-only phases (default: the config's).

Training runs in chunks of --chunk steps (a constant learning rate after warm-up, so that a
chunk boundary changes nothing) until the arm's phase has used its CPU seconds; rerunning goes
on where it stopped (each phase's state is <root>/state/<phase>.json, its workdir resumes).
--arms=a,b and --arms=c can run at once in two processes (say one per core); the call that
finds every arm evaluated writes the table, and --report writes it from what is there. Then each
arm's video base is evaluated on the first --num_videos held-out test prompts with the
moving-shapes detectors (colour, shape, size, motion, speed, all), temporal consistency and FVD
(`--mode=eval`). Prints one table and writes <root>/results.json (copy it under
experiments/make_a_video/ when it should be kept).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys

from vdm_jax import demo

CONFIG = "configs/make_a_video.py"


def _cpu_children() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


class Experiment:
  """The state of the three arms; every command runs as a subprocess of the CLI."""

  def __init__(self, args):
    self.args = args
    self.root = os.path.abspath(args.root)
    os.makedirs(self.root, exist_ok=True)
    self.state_dir = os.path.join(self.root, "state")
    os.makedirs(self.state_dir, exist_ok=True)
    self.common = [f"--config.data.data_dir={os.path.join(self.root, 'data')}",
                   f"--config.text.store_path={os.path.join(self.root, 'text_store.safetensors')}",
                   "--config.train.lr_schedule=constant", "--config.train.sample_every=0",
                   f"--config.train.checkpoint_every={args.chunk}", "--config.train.keep_last=1",
                   f"--config.train.log_every={min(50, args.chunk)}"]

  def phase(self, name, budget=None):
    """The state of phase `name` ({'cpu_s', 'steps', 'budget'}); a phase not started yet is
    created when `budget` is given, else None."""
    path = os.path.join(self.state_dir, name + ".json")
    if os.path.exists(path):
      return json.load(open(path))
    return None if budget is None else {"cpu_s": 0.0, "steps": 0, "budget": budget}

  def _save(self, name, p):
    path = os.path.join(self.state_dir, name + ".json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(p, f, indent=2)
    os.replace(path + ".tmp", path)

  def phases(self):
    return {n[:-5]: self.phase(n[:-5]) for n in sorted(os.listdir(self.state_dir))
            if n.endswith(".json")}

  def cli(self, mode, variant, workdir=None, extra=()):
    cmd = [sys.executable, "-m", "vdm_jax.main", f"--mode={mode}", f"--config={CONFIG}:{variant}"]
    cmd += self.common + list(extra)
    if workdir:
      cmd.append(f"--workdir={workdir}")
    print("$", " ".join(cmd[2:]), flush=True)
    before = _cpu_children()
    subprocess.run(cmd, check=True)
    return _cpu_children() - before

  def train_phase(self, name, variant, budget, extra=()):
    """Trains phase `name` in chunks until it has used `budget` CPU seconds; returns its
    workdir."""
    workdir = os.path.join(self.root, name)
    p = self.phase(name, budget)
    while p["cpu_s"] < budget:
      steps = p["steps"] + self.args.chunk
      p["cpu_s"] += self.cli("train", variant, workdir,
                             list(extra) + [f"--config.train.num_steps={steps}"])
      if demo.latest_step(workdir) < steps:   # stopped early (SIGTERM): a clean exit, not done
        self._save(name, p)
        sys.exit(f"{name}: training stopped at step {demo.latest_step(workdir)} of {steps}; "
                 "rerun to resume.")
      p["steps"] = steps
      self._save(name, p)
      print(f"{name}: {p['steps']} steps, {p['cpu_s']:.0f} / {budget:.0f} CPU s", flush=True)
    return workdir

  def inflate(self, image_dir, name):
    workdir = os.path.join(self.root, name)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      self.cli("inflate", "motion", workdir, [f"--config.train.init_from={image_dir}"])
    return workdir

  def evaluate(self, arm, variant, workdir):
    out = os.path.join(self.root, "eval", arm)
    path = os.path.join(out, "eval.json")
    if not os.path.exists(path):
      self.cli("eval", variant, workdir, [f"--out={out}", f"--num_videos={self.args.num_videos}"])
    return json.load(open(path))

  def eval_path(self, arm):
    return os.path.join(self.root, "eval", arm, "eval.json")

  def run(self):
    a = self.args
    arms = set(a.arms.split(","))
    if not arms or not arms <= set(ARMS):
      sys.exit(f"--arms={a.arms!r}: a comma-separated subset of {','.join(ARMS)}")
    if not a.report:
      for variant in ("t2i", "motion"):
        self.cli("build_data", variant)
      self.train_and_evaluate(arms)
    if a.report or all(os.path.exists(self.eval_path(arm)) for arm in ARMS.values()):
      self.report()

  def train_and_evaluate(self, arms):
    a = self.args
    budget = a.budget_cpu_s
    video_share = 1.0 - a.image_share
    motion_extra = [f"--config.train.lr={a.motion_lr}"] if a.motion_lr else []
    if arms & {"a", "b"}:
      image = self.train_phase("t2i", "t2i", a.image_share * budget)    # shared by (a), (b)
      self.evaluate("t2i_image_model", "t2i", image)
    if "a" in arms:
      motion = self.inflate(image, "motion")
      # The inflated model before any video training: the image model frame by frame (each
      # frame its own noise), the start the temporal layers learn motion from.
      if (self.phase("motion") or {}).get("steps", 0) == 0:
        self.evaluate("a0_inflated_untrained", "motion", motion)
      motion = self.train_phase("motion", "motion", video_share * budget, motion_extra)
      self.evaluate(ARMS["a"], "motion", motion)
    if "b" in arms:
      self.inflate(image, "motion_b")
      motion_b = self.train_phase("motion_b", "motion",
                                  (video_share - a.finetune_share) * budget, motion_extra)
      finetune = self.train_phase("finetune", "finetune", a.finetune_share * budget,
                                  [f"--config.train.init_from={motion_b}"])
      self.evaluate(ARMS["b"], "finetune", finetune)
    if "c" in arms:
      scratch = self.train_phase("scratch", "scratch", budget)
      self.evaluate(ARMS["c"], "scratch", scratch)

  def report(self):
    a = self.args
    load = lambda arm: (json.load(open(self.eval_path(arm)))
                        if os.path.exists(self.eval_path(arm)) else None)
    results = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible",
               "budget_cpu_s": a.budget_cpu_s, "image_share": a.image_share,
               "finetune_share": a.finetune_share, "motion_lr": a.motion_lr,
               "phases": self.phases(),
               "arms": {arm: r for arm in ARMS.values() if (r := load(arm)) is not None},
               "image_model": load("t2i_image_model"),
               "inflated_untrained": load("a0_inflated_untrained")}
    missing = [arm for arm in ARMS.values() if arm not in results["arms"]]
    if missing:
      print(f"not evaluated yet: {', '.join(missing)}", flush=True)
    with open(os.path.join(self.root, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    _print_table(results)


ARMS = {"a": "a_inflated_unlabeled", "b": "b_plus_captioned", "c": "c_scratch_captioned"}


def _print_table(results):
  keys = ("color", "shape", "size", "motion", "speed", "all")
  print("| arm | " + " | ".join(keys) + " | FVD |")
  print("|---|" + "---|" * (len(keys) + 1))
  rows = dict(results["arms"])
  for label, key in (("image model (t2i, one frame)", "image_model"),
                     ("inflated, before video training", "inflated_untrained")):
    if results.get(key):
      rows[label] = results[key]
  for arm, r in rows.items():
    acc = r.get("caption_accuracy", {})
    print(f"| {arm} | " + " | ".join(f"{acc.get(k, float('nan')):.2f}" for k in keys)
          + f" | {r.get('fvd', float('nan')):.0f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="mav_compare")
  parser.add_argument("--budget_cpu_s", type=float, default=2600.0)
  parser.add_argument("--image_share", type=float, default=0.4)
  parser.add_argument("--finetune_share", type=float, default=0.2)
  parser.add_argument("--chunk", type=int, default=200)
  parser.add_argument("--num_videos", type=int, default=64)
  parser.add_argument("--motion_lr", type=float, default=0.0,
                      help="learning rate of the temporal-only phases (0: the config's)")
  parser.add_argument("--arms", default="a,b,c",
                      help="the arms this call trains and evaluates (a, b share the t2i phase)")
  parser.add_argument("--report", action="store_true",
                      help="only write results.json and the table from what is evaluated")
  Experiment(parser.parse_args()).run()


if __name__ == "__main__":
  main()
