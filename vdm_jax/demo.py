"""`make demo` and `make demo-train`: the trained demo cascade that ships with vdm_jax.

    python -m vdm_jax.demo [--out=demo_out] [--weights=<exported cascade dir>]     # make demo
    python -m vdm_jax.demo --train [--out=demo_train] [--budget=1.0] \
        [--export=vdm_jax/assets/demo_cascade]                                    # make demo-train

`make demo` trains nothing: it verifies and loads the cascade exported under
`vdm_jax/assets/demo_cascade/` (EMA parameters as safetensors, each stage's config as JSON, a
manifest with the sha256 of every file and the recipe that made them; `vdm_jax/export.py`),
builds the moving-shapes test split, samples the demo prompts through the cascade (and through
the cascade with the distilled base), samples and evaluates the held-out test prompts with the
moving-shapes detectors and FVD, and writes under --out:
  samples/<i>_<stage>/   the demo prompts after every stage (GIF + MP4), samples/final/
  index.html             the gallery: every stage of every demo prompt and of the held-out test
                         prompts beside a real clip, and the figures
  gifs/, eval.json, demo.json (timings, accuracy per stage; the shipped recipe)

`--train` reproduces the shipped cascade from scratch with the recipe of configs/demo.py: it
builds the data, trains the stages (each for `train.num_steps` times --budget), distills the
base, exports the result to --export (default <out>/exported; give
`--export=vdm_jax/assets/demo_cascade` to replace what `make demo` loads) and then shows it as
above. Rerunning resumes every stage from its last checkpoint. It runs unchanged on a GPU or TPU
(jax picks the accelerator).
"""
import importlib
import importlib.util
import json
import os
import re
import sys
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax

from vdm_jax import compile_cache
from vdm_jax import cpu_flags
from vdm_jax import config_utils
from vdm_jax import export
from vdm_jax.cli import cascade_eval
from vdm_jax.data import build
from vdm_jax.distill import run as distill_run
from vdm_jax.sample import cascade as cascade_lib
from vdm_jax.train import loop

_OUT = flags.DEFINE_string("out", "demo_out", "Output directory.")
_BUDGET = flags.DEFINE_float("budget", 1.0, "Multiplies every stage's train.num_steps.")
_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Cascade config (a get_config module).")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", None, "Held-out prompts to evaluate.")
_TRAIN = flags.DEFINE_bool("train", False, "Train the cascade from scratch (the recipe of "
                            "--config), export it to --export and show it.")
_WEIGHTS = flags.DEFINE_string("weights", "", "Exported cascade to load (default: the one "
                               "vdm_jax ships, vdm_jax/assets/demo_cascade).")
_EXPORT = flags.DEFINE_string("export", "", "--train: export the trained cascade here (default "
                              "<out>/exported; vdm_jax/assets/demo_cascade replaces the shipped "
                              "one that `make demo` loads).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent XLA compilation cache directory, or 'off' (default: "
    "$VDM_JAX_COMPILE_CACHE, else ~/.cache/vdm_jax/xla).")
_DISTILL = flags.DEFINE_bool(
    "distill", True, "Also distill one stage (config `demo` section: guided + progressive "
    "distillation) and show the cascade with the distilled stage beside the trained one.")
SAMPLE_BATCH = 8   # prompts per sampler call: the demo and held-out prompts share one compile


def _checkout_on_path() -> None:
  """Puts the checkout holding this package on sys.path: its `configs` package (beside
  vdm_jax, not part of it) is then importable, and configs/*.py can import each other."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)


def _load_config(path: str):
  _checkout_on_path()
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def demo_config(path: str, out: str, budget: float):
  """The cascade config with every stage's data, text store and steps placed under `out`."""
  if budget <= 0:
    raise ValueError(f"--budget={budget} must be positive.")
  config = _load_config(path)
  named = cascade_lib.stage_configs(config)
  for c in [config] + [c for _, c in named]:
    c.data.data_dir = os.path.join(out, "data")
    c.text.store_path = os.path.join(out, "text_store.safetensors")
    config_utils.validate_config(c)
  for _, c in named:
    steps = max(1, int(round(int(c.train.num_steps) * budget)))
    c.train.num_steps = steps
    c.train.checkpoint_every = max(1, min(int(c.train.checkpoint_every), steps))
    c.train.warmup_steps = min(int(c.train.warmup_steps), max(1, steps // 10))
  cascade_lib.check_chain(named)
  return config


def distill_config(config, budget: float):
  """The distillation config of the demo's `demo.distill_stage`: that stage's config with the
  `distill` section of configs/distill.py (guided mode), round lengths times `budget`."""
  _checkout_on_path()
  distill_lib = importlib.import_module("configs.distill")   # a checkout's, not the package's
  d = config.demo
  c = config.cascade.stages[d.distill_stage].copy_and_resolve_references()
  distill_lib.distill_config(c, mode="guided", start=int(d.distill_start),
                             end=int(d.distill_end), small=True)
  c.distill.guided_steps = max(1, int(round(int(d.distill_guided_steps) * budget)))
  c.distill.steps_per_round = max(1, int(round(int(d.distill_steps_per_round) * budget)))
  c.train.checkpoint_every = max(c.distill.guided_steps, c.distill.steps_per_round)
  c.train.log_every = 20
  return c


def last_round(workdir: str) -> Optional[str]:
  """The last finished round directory of a distillation workdir (None before it ends)."""
  path = os.path.join(workdir, "rounds.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  rounds, plan = manifest.get("rounds", []), manifest.get("plan", [])
  if not rounds or len(rounds) < len(plan):
    return None
  return rounds[-1]["directory"]


def latest_step(workdir: str) -> int:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return 0
  steps = [int(n) for n in os.listdir(directory) if re.fullmatch(r"\d+", n)]
  return max(steps, default=0)


def packaged_weights() -> str:
  """The exported demo cascade that ships inside the package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_cascade")


class _Runner:
  """Runs the demo's phases with a header, wall / CPU seconds and the load average each."""

  def __init__(self):
    self.timings, self.cpu, self.loads = {}, {}, {}

  def __call__(self, name, fn):
    print(f"\n== {name} ==", flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    self.timings[name] = round(time.perf_counter() - start, 1)
    self.cpu[name] = round(time.process_time() - start_cpu, 1)   # all threads
    self.loads[name] = round(os.getloadavg()[0], 1)
    print(f"== {name}: {self.timings[name]:.0f}s wall, {self.cpu[name]:.0f}s CPU (load average "
          f"{self.loads[name]}) ==", flush=True)
    return result


def _compute_path(workdir: str) -> str:
  return os.path.join(workdir, "compute.json")


def read_compute(workdir: str) -> dict:
  """{'steps', 'cpu_s', 'wall_s', 'machine'} spent training a stage so far (over resumes)."""
  path = _compute_path(workdir)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _train_stage(c, workdir: str) -> None:
  """Trains (or resumes) one stage and adds the CPU / wall seconds spent to compute.json."""
  before = read_compute(workdir)
  start, start_cpu = time.perf_counter(), time.process_time()
  loop.train_and_evaluate(c, workdir)
  os.makedirs(workdir, exist_ok=True)
  record = {"steps": latest_step(workdir),
            "cpu_s": round(before.get("cpu_s", 0.0) + time.process_time() - start_cpu, 1),
            "wall_s": round(before.get("wall_s", 0.0) + time.perf_counter() - start, 1),
            "machine": f"{os.cpu_count()} CPU cores" if jax.default_backend() == "cpu"
                       else f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
  with open(_compute_path(workdir), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)


def train_cascade(config, out: str, run: _Runner) -> tuple[str, Optional[str]]:
  """`--train`: builds the data, trains every stage and distills the base (resuming what is
  done). Returns (the cascade root, the last distillation round or None)."""
  root = os.path.join(out, "cascade")
  run("build data", lambda: build.build_dataset(config))
  for name, c in cascade_lib.stage_configs(config):
    workdir = cascade_lib.stage_workdir(root, name)
    if latest_step(workdir) >= int(c.train.num_steps):
      print(f"{name}: already trained to step {latest_step(workdir)}; not retraining.")
      continue
    run(f"train {name} ({c.train.num_steps} steps)", lambda c=c, w=workdir: _train_stage(c, w))
  round_dir = None
  if _DISTILL.value and config.get("demo") is not None:
    dcfg = distill_config(config, _BUDGET.value)
    name = str(config.demo.distill_stage)
    dwork = os.path.join(root, f"{name}_distilled")
    round_dir = last_round(dwork)
    if round_dir is None:
      def distill():
        start, start_cpu = time.perf_counter(), time.process_time()
        distill_run.run_distillation(dcfg, dwork, cascade_lib.stage_workdir(root, name))
        with open(_compute_path(dwork), "w", encoding="utf-8") as f:
          json.dump({"cpu_s": round(time.process_time() - start_cpu, 1),
                     "wall_s": round(time.perf_counter() - start, 1),
                     "steps": sum(int(r.get("steps_run", 0)) for r in _rounds(dwork))},
                    f, indent=2)
      run(f"distill {name} ({dcfg.distill.start_steps} -> {dcfg.distill.end_steps} steps)",
          distill)
      round_dir = last_round(dwork)
    else:
      print(f"{name}: already distilled ({round_dir}); not redistilling.")
  return root, round_dir


def _rounds(workdir: str) -> list:
  path = os.path.join(workdir, "rounds.json")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("rounds", [])


def export_trained(config, root: str, round_dir: Optional[str], directory: str) -> dict:
  """Exports the trained cascade under `root` (+ the distilled base) with its compute and
  recipe; returns the manifest."""
  compute = {n: read_compute(cascade_lib.stage_workdir(root, n))
             for n, _ in cascade_lib.stage_configs(config)}
  distilled = {}
  if round_dir is not None:
    name = str(config.demo.distill_stage)
    distilled[name] = round_dir
    compute[f"{name} distilled"] = read_compute(os.path.join(root, f"{name}_distilled"))
  recipe = {"config": _CONFIG.value, "budget": _BUDGET.value,
            "command": f"python -m vdm_jax.demo --train --budget={_BUDGET.value} "
                       f"--config={_CONFIG.value}",
            "commit": export.git_commit(os.path.dirname(os.path.abspath(__file__)))}
  return export.export_cascade(config, root, directory, distilled=distilled, compute=compute,
                               recipe=recipe)


def load_exported(config, weights: str, out: str, run: _Runner):
  """(the shipped cascade, {label: cascade}, manifest): every file verified against the
  manifest; the stages read the test split under `out`/data."""
  manifest = run(f"verify {weights}", lambda: export.verify(weights))
  seed = int(config.cascade.get("seed", 0))
  cascade = run("load cascade", lambda: export.load_cascade(weights, cascade_seed=seed))
  cascades = {"trained": cascade}
  if manifest.get("distilled"):
    distilled = export.load_cascade(weights, distilled=True, cascade_seed=seed,
                                    text_encoder=cascade.stages[0].text_encoder)
    for name in manifest["distilled"]:
      i = cascade.names.index(name)
      cascades[f"{name} distilled"] = cascade.with_stage(name, distilled.stages[i],
                                                          distilled.settings[i])
  for stage in {id(s): s for c in cascades.values() for s in c.stages}.values():
    stage.config.data.data_dir = os.path.join(out, "data")
  return cascade, cascades, manifest


def curve_table(curve: dict) -> dict:
  """The manifest's training curve (experiments/recipe/curve.py's JSON: panel -> points) as a
  gallery table: one row per evaluated checkpoint, one column per figure of its points."""
  rows = {}
  for panel, points in curve.get("curves", {}).items():
    for p in points:
      if p.get("branch_point"):
        continue     # the parent panel's point, already a row there
      rows[f"{panel}: {p['step']} steps, {p['cpu_hours']:.2f} CPU-h"] = {
          k: v for k, v in p.items() if k not in ("step", "cpu_hours")}
  return rows


def show(config, cascades: dict, out: str, run: _Runner, *, recipe: dict,
         curve: Optional[dict] = None) -> dict:
  """Samples the demo prompts and evaluates the held-out prompts through every cascade;
  writes the gallery, eval.json and demo.json; returns the demo.json summary. `curve` (the
  manifest's `training_curve`) is shown as a table."""
  cascade = cascades["trained"]
  final = cascade.final.config
  run("build the test split", lambda: build.build_dataset(final))
  prompts = list(config.sample.prompts)
  real = [cascade_eval.real_clip_for_prompt(p, frames=final.frames, height=final.height,
                                            width=final.width, fps=final.fps, seed=i)
          for i, p in enumerate(prompts)]
  entries, demo_table = [], {}
  for label, casc in cascades.items():
    tag = "" if label == "trained" else "_" + label.replace(" ", "_")
    demo = run(f"sample demo prompts ({label})", lambda casc=casc, tag=tag:
               cascade_lib.sample_cascade(config, out, prompts,
                                          out_dir=os.path.join(out, "samples" + tag),
                                          cascade=casc, batch_size=SAMPLE_BATCH))
    entries += cascade_eval.gallery_entries(out, casc, demo["videos"], prompts, real,
                                            prefix=f"demo{tag}_")
    for (stage_name, v), s in zip(demo["videos"].items(), casc.stages):
      r = cascade_eval.read_videos(v, prompts, float(s.config.fps))["caption_accuracy"]
      demo_table[stage_name + tag.replace("_", " ")] = {
          k: v for k, v in r.items() if k != "num_clips"}
  extra_figures = {"caption accuracy on the demo prompts": demo_table}
  distilled_scores = {}
  for label, casc in list(cascades.items())[1:]:
    distilled_scores[label] = run(
        f"evaluate held-out prompts ({label})",
        lambda casc=casc: cascade_eval.score_held_out(
            config, casc, num_videos=_NUM_VIDEOS.value, batch_size=SAMPLE_BATCH)[0])
    extra_figures[f"held-out prompts, cascade with the {label}"] = {
        **cascade_eval.accuracy_table(distilled_scores[label]),
        "final stage": {k: distilled_scores[label].get(k)
                        for k in ("fvd", "seconds_per_video")}}
  extra_figures["the shipped recipe"] = recipe
  if curve:
    extra_figures[f"training curve: {curve.get('what', '')} ({curve.get('machine', '')})"] = (
        curve_table(curve))
  extra_figures["demo run"] = {
      "cpu cores": os.cpu_count(),
      **{f"{k}: wall s / CPU s / load average": f"{run.timings[k]:.0f} / {run.cpu[k]:.0f} / "
         f"{run.loads[k]}" for k in run.timings}}
  scores = run("evaluate held-out prompts", lambda: cascade_eval.evaluate_cascade(
      config, out, out_dir=out, cascade=cascade, num_videos=_NUM_VIDEOS.value,
      batch_size=SAMPLE_BATCH, extra_entries=entries, extra_figures=extra_figures,
      title=f"vdm_jax demo: {' -> '.join(cascade.names)} cascade on moving shapes"))
  summary = {"timings_s": run.timings, "cpu_s": run.cpu, "load_average": run.loads,
             "steps": {n: s.step for n, s in zip(cascade.names, cascade.stages)},
             "recipe": recipe,
             "demo_prompts_caption_accuracy": demo_table,
             "held_out_caption_accuracy": {n: r["caption_accuracy"]
                                           for n, r in scores["stages"].items()},
             "held_out_caption_accuracy_held_out_combos": {
                 n: r.get("caption_accuracy_held_out") for n, r in scores["stages"].items()},
             "real_caption_accuracy": scores["real"]["caption_accuracy"],
             "fvd": scores.get("fvd"), "seconds_per_video": scores.get("seconds_per_video"),
             "distilled": {label: {"held_out_caption_accuracy": {
                                       n: r["caption_accuracy"]
                                       for n, r in sc["stages"].items()},
                                   "fvd": sc.get("fvd"),
                                   "seconds_per_video": sc.get("seconds_per_video")}
                           for label, sc in distilled_scores.items()}}
  with open(os.path.join(out, "demo.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  last = cascade.names[-1]
  acc = scores["stages"][last]["caption_accuracy"]
  print("\nDemo finished: " + ", ".join(f"{k} {v:.0f}s" for k, v in run.timings.items()))
  print(f"Caption accuracy of the final ({last}) videos on {scores['num_videos']} test prompts: "
        + ", ".join(f"{k} {v:.2f}" for k, v in acc.items() if isinstance(v, float)))
  if scores.get("fvd") is not None:
    print(f"FVD (I3D, final stage vs real clips): {scores['fvd']:.1f}")
  print(f"Gallery: {os.path.join(out, 'index.html')}")
  return summary


def main(argv):
  del argv
  compile_cache.enable(_COMPILE_CACHE.value)   # a second `make demo` starts without compiling
  out = _OUT.value
  config = demo_config(_CONFIG.value, out, _BUDGET.value)
  run = _Runner()
  weights = _WEIGHTS.value or packaged_weights()
  if _TRAIN.value:
    root, round_dir = train_cascade(config, out, run)
    weights = _EXPORT.value or os.path.join(out, "exported")
    run(f"export to {weights}", lambda: export_trained(config, root, round_dir, weights))
  elif not os.path.exists(os.path.join(weights, export.MANIFEST)):
    raise SystemExit(f"No exported demo cascade at {weights}: run `make demo-train` (python -m "
                     "vdm_jax.demo --train) to train one, or pass --weights=<directory>.")
  _, cascades, manifest = load_exported(config, weights, out, run)
  recipe = dict(manifest.get("recipe", {}), weights=weights,
                compute={n: e.get("compute") for n, e in manifest["stages"].items()},
                distilled_compute={n: e.get("compute")
                                   for n, e in manifest.get("distilled", {}).items()})
  show(config, cascades, out, run, recipe=recipe, curve=manifest.get("training_curve"))


if __name__ == "__main__":
  cpu_flags.apply()   # before jax starts a backend
  logging.set_verbosity(logging.INFO)
  app.run(main)
