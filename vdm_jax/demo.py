"""`make demo`: build moving shapes, train a text-to-video cascade on a CPU, sample and evaluate it.

    python -m vdm_jax.demo [--out=demo_out] [--budget=1.0] [--config=configs/demo.py]

The cascade of configs/demo.py (base -> tsr1 -> ssr1 at CPU scale) is trained stage by stage,
each for its `train.num_steps` times --budget, then sampled end to end. Writes, under --out:
  data/                  the moving_shapes dataset (tfds, array_record)
  text_store.safetensors MiniLM embeddings of every training caption (shared by the stages)
  cascade/<stage>/       each stage's checkpoints, metrics.jsonl, TensorBoard events
  samples/<i>_<stage>/   the demo prompts after every stage (GIF + MP4), samples/final/
  index.html             the gallery: every stage of every demo prompt and of held-out test
                         prompts beside a real clip, and the figures (caption accuracy of every
                         stage read by the detectors, FVD of the final stage, timings)
  gifs/, eval.json, demo.json (timings, budget, load average, accuracy)
Each step is the library call that the matching `python -m vdm_jax.main --mode=...` makes.
Re-running resumes: a stage whose checkpoint already reached its steps is not retrained.
"""
import json
import os
import re
import sys
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging

_OUT = flags.DEFINE_string("out", "demo_out", "Output directory.")
_BUDGET = flags.DEFINE_float("budget", 1.0, "Multiplies every stage's train.num_steps.")
_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Cascade config (a get_config module).")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", None, "Held-out prompts to evaluate.")
_DISTILL = flags.DEFINE_bool(
    "distill", True, "Also distill one stage (config `demo` section: guided + progressive "
    "distillation) and show the cascade with the distilled stage beside the trained one.")
SAMPLE_BATCH = 8   # prompts per sampler call: the demo and held-out prompts share one compile


def _load_config(path: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)  # so configs/*.py can import each other
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def demo_config(path: str, out: str, budget: float):
  """The cascade config with every stage's data, text store and steps placed under `out`."""
  from vdm_jax import cascade, config_utils  # pylint: disable=g-import-not-at-top
  if budget <= 0:
    raise ValueError(f"--budget={budget} must be positive.")
  config = _load_config(path)
  named = cascade.stage_configs(config)
  for c in [config] + [c for _, c in named]:
    c.data.data_dir = os.path.join(out, "data")
    c.text.store_path = os.path.join(out, "text_store.safetensors")
    config_utils.validate_config(c)
  for _, c in named:
    steps = max(1, int(round(int(c.train.num_steps) * budget)))
    c.train.num_steps = steps
    c.train.checkpoint_every = max(1, min(int(c.train.checkpoint_every), steps))
    c.train.warmup_steps = min(int(c.train.warmup_steps), max(1, steps // 10))
  cascade.check_chain(named)
  return config


def distill_config(config, budget: float):
  """The distillation config of the demo's `demo.distill_stage`: that stage's config with the
  `distill` section of configs/distill.py (guided mode), round lengths times `budget`."""
  from configs import distill as distill_lib  # pylint: disable=g-import-not-at-top
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


def _latest_step(workdir: str) -> int:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return 0
  steps = [int(n) for n in os.listdir(directory) if re.fullmatch(r"\d+", n)]
  return max(steps, default=0)


def main(argv):
  del argv
  from vdm_jax import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  out = _OUT.value
  config = demo_config(_CONFIG.value, out, _BUDGET.value)
  root = os.path.join(out, "cascade")
  timings, cpu, loads = {}, {}, {}

  def run(name, fn):
    print(f"\n== {name} ==", flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    timings[name] = round(time.perf_counter() - start, 1)
    cpu[name] = round(time.process_time() - start_cpu, 1)   # all threads: load-independent
    loads[name] = round(os.getloadavg()[0], 1)
    print(f"== {name}: {timings[name]:.0f}s wall, {cpu[name]:.0f}s CPU (load average "
          f"{loads[name]}) ==", flush=True)
    return result

  run("build data", lambda: build.build_dataset(config))
  for name, c in cascade_lib.stage_configs(config):
    workdir = cascade_lib.stage_workdir(root, name)
    if _latest_step(workdir) >= int(c.train.num_steps):
      print(f"{name}: already trained to step {_latest_step(workdir)}; not retraining.")
      continue
    run(f"train {name} ({c.train.num_steps} steps)",
        lambda c=c, w=workdir: loop.train_and_evaluate(c, w))
  round_dir = None
  if _DISTILL.value and config.get("demo") is not None:
    from vdm_jax.distill import run as distill_run  # pylint: disable=g-import-not-at-top
    dcfg = distill_config(config, _BUDGET.value)
    name = str(config.demo.distill_stage)
    dwork = os.path.join(root, f"{name}_distilled")
    round_dir = last_round(dwork)
    if round_dir is None:
      run(f"distill {name} ({dcfg.distill.start_steps} -> {dcfg.distill.end_steps} steps)",
          lambda: distill_run.run_distillation(dcfg, dwork,
                                               cascade_lib.stage_workdir(root, name)))
      round_dir = last_round(dwork)
    else:
      print(f"{name}: already distilled ({round_dir}); not redistilling.")
  cascade = run("load cascade", lambda: cascade_lib.Cascade.from_config(config, root))
  cascades = {"trained": cascade}
  if round_dir is not None:
    name = str(config.demo.distill_stage)
    i = cascade.names.index(name)
    student, settings = cascade_lib.distilled_stage(
        config.cascade.stages[name], round_dir, index=i,
        cascade_seed=int(config.cascade.get("seed", 0)),
        text_encoder=cascade.stages[i].text_encoder)
    cascades[f"{name} distilled"] = cascade.with_stage(name, student, settings)
  prompts = list(config.sample.prompts)
  final = cascade.final.config
  real = [cascade_eval.real_clip_for_prompt(p, frames=final.frames, height=final.height,
                                            width=final.width, fps=final.fps, seed=i)
          for i, p in enumerate(prompts)]
  entries, demo_table = [], {}
  for label, casc in cascades.items():
    tag = "" if label == "trained" else "_" + label.replace(" ", "_")
    demo = run(f"sample demo prompts ({label})", lambda casc=casc, tag=tag:
               cascade_lib.sample_cascade(config, root, prompts,
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
  extra_figures["demo run"] = {   # every step so far (the final evaluation is in demo.json)
      "budget": _BUDGET.value, "cpu cores": os.cpu_count(),
      **{f"{k}: wall s / CPU s / load average": f"{timings[k]:.0f} / {cpu[k]:.0f} / "
         f"{loads[k]}" for k in timings}}
  scores = run("evaluate held-out prompts", lambda: cascade_eval.evaluate_cascade(
      config, root, out_dir=out, cascade=cascade, num_videos=_NUM_VIDEOS.value,
      batch_size=SAMPLE_BATCH, extra_entries=entries, extra_figures=extra_figures,
      title=f"vdm_jax demo: {' -> '.join(cascade.names)} cascade on moving shapes"))
  summary = {"budget": _BUDGET.value, "timings_s": timings, "cpu_s": cpu, "load_average": loads,
             "steps": {n: s.step for n, s in zip(cascade.names, cascade.stages)},
             "demo_prompts_caption_accuracy": demo_table,
             "held_out_caption_accuracy": {n: r["caption_accuracy"]
                                           for n, r in scores["stages"].items()},
             "real_caption_accuracy": scores["real"]["caption_accuracy"],
             "fvd": scores.get("fvd"), "seconds_per_video": scores.get("seconds_per_video"),
             "distilled": {label: {"round": os.path.basename(round_dir or ""),
                                   "held_out_caption_accuracy": {
                                       n: r["caption_accuracy"]
                                       for n, r in sc["stages"].items()},
                                   "fvd": sc.get("fvd"),
                                   "seconds_per_video": sc.get("seconds_per_video")}
                           for label, sc in distilled_scores.items()}}
  with open(os.path.join(out, "demo.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  last = cascade.names[-1]
  acc = scores["stages"][last]["caption_accuracy"]
  print("\nDemo finished: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
  print(f"Caption accuracy of the final ({last}) videos on {scores['num_videos']} test prompts: "
        + ", ".join(f"{k} {v:.2f}" for k, v in acc.items() if isinstance(v, float)))
  if scores.get("fvd") is not None:
    print(f"FVD (I3D, final stage vs real clips): {scores['fvd']:.1f}")
  print(f"Gallery: {os.path.join(out, 'index.html')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
