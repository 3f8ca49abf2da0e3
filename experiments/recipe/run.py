"""Recipe search for the demo cascade: one stage variant, trained and read by the detectors.

    JAX_PLATFORMS=cpu python experiments/recipe/run.py --variant=NAME --stage=base \
        --steps=2400 --eval_steps=1200,2400 [--set=key=value ...] [--rewrite=left=apple,...] \
        [--run_dir=workdirs/recipe] [--results=experiments/recipe/results.jsonl]

Every run is one stage of configs/demo.py (same data, seed and sampler) with the overrides of
--set, trained for --steps optimizer steps (rerunning resumes). At every step of
--eval_steps it measures, on the first --eval_videos test prompts (64 by default: the demo's
held-out split, half of them with the held-out combos):

  * base: the stage samples the prompts with the demo's sampler; the moving-shapes detectors
    read colour, shape, size, motion, speed, background and the object count;
  * SR stages: the stage is fed the REAL low-resolution clip of each prompt (as
    experiments/cascade/sr_fidelity.py) and its sample is read by the detectors and compared
    with the real clip (MSE in [-1, 1]);
  * the caption-swap gap (base): the x-prediction MSE on the real test clips at fixed logSNR
    with their own caption and with one word swapped (motion left<->right, up<->down; shape;
    colour). gap = swapped / own - 1 > 0 means the model reads that word.

Each evaluation appends one JSON line to --results with the CPU seconds of training so far (all
threads; the run's own process), so that variants compare by accuracy per CPU-second.

--dit=VARIANT trains the base as the video transformer of configs/dit.py (same data, optimizer
and sampler settings), for the transformer-against-U-Net comparison.

--rewrite=a=b,c=d replaces words of every caption before it is encoded (training store and
sampling alike): a diagnostic of the text signal (e.g. motion words replaced by unrelated,
well-separated words), not a product feature.
"""
import json
import math
import os
import re
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_VARIANT = flags.DEFINE_string("variant", None, "Name of this run (its workdir).", required=True)
_STAGE = flags.DEFINE_enum("stage", "base", ["base", "tsr1", "ssr1"], "Demo stage to train.")
_STEPS = flags.DEFINE_integer("steps", 2400, "Optimizer steps.")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", [], "Checkpoints to evaluate (default: --steps).")
_EVAL_VIDEOS = flags.DEFINE_integer("eval_videos", 64, "Test prompts per evaluation.")
_SET = flags.DEFINE_multi_string("set", [], "Stage-config overrides key=value.")
_REWRITE = flags.DEFINE_string("rewrite", "", "Caption word rewrites a=b,c=d (diagnostic).")
_RUN_DIR = flags.DEFINE_string("run_dir", "workdirs/recipe", "Where the runs live.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Dataset directory (default: <run_dir>/data).")
_OUT = flags.DEFINE_string("results", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results.jsonl"), "Results (JSON lines).")
_PHASE = flags.DEFINE_enum("phase", "all", ["train", "eval", "all"], "What to run.")
_DIT = flags.DEFINE_string(
    "dit", None, "Train the video transformer instead of the U-Net (base stage): the model "
    "section of configs/dit.py with this variant, e.g. 'layout=full' or "
    "'layout=alternating,text=joint' (objective=flow also sets the diffusion and sampler).")
_FVD = flags.DEFINE_bool("fvd", False, "Base stage: also the FVD of the sampled test videos "
                         "against the real clips (I3D features; a few CPU minutes).")
_SWAP_LOGSNR = (-4.0, -2.0, 0.0)


def _rewrites() -> dict:
  out = {}
  for item in filter(None, _REWRITE.value.split(",")):
    a, _, b = item.partition("=")
    out[a.strip()] = b.strip()
  return out


def install_rewrite(words: dict) -> None:
  """Makes every TextEncoder rewrite caption words before tokenizing (diagnostic only)."""
  if not words:
    return
  from vdm_jax.text import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
  original = encoder_lib.TextEncoder._run  # pylint: disable=protected-access

  def _run(self, prompts):
    return original(self, [pattern.sub(lambda m: words[m.group(1)], p) for p in prompts])

  encoder_lib.TextEncoder._run = _run  # pylint: disable=protected-access


def run_config(run_dir: str):
  """(cascade config cut to this stage, the stage's config) with the overrides applied."""
  from vdm_jax import demo  # pylint: disable=g-import-not-at-top
  data_dir = _DATA_DIR.value or os.path.join(run_dir, "data")
  config = demo.demo_config(os.path.join(ROOT, "configs", "demo.py"), run_dir, 1.0)
  order = list(config.cascade.order)
  config.cascade.order = tuple(order[:order.index(_STAGE.value) + 1])
  stage = config.cascade.stages[_STAGE.value]
  for c in [config] + [config.cascade.stages[n] for n in config.cascade.order]:
    c.data.data_dir = data_dir
  store = "text_store" + ("_" + _VARIANT.value if _REWRITE.value else "") + ".safetensors"
  stage.text.store_path = os.path.join(run_dir, store)
  if _DIT.value is not None:
    if _STAGE.value != "base":
      raise ValueError("--dit replaces the base stage's U-Net; use --stage=base")
    sys.path.insert(0, ROOT)
    from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
    dit = dit_config.get_config(_DIT.value)
    stage.model, stage.diffusion = dit.model, dit.diffusion
    stage.sample.sampler, stage.sample.eta = dit.sample.sampler, dit.sample.eta
  t = stage.train
  t.num_steps = _STEPS.value
  t.checkpoint_every = math.gcd(*_eval_steps())
  t.warmup_steps = min(int(t.warmup_steps), max(1, _STEPS.value // 10))
  from vdm_jax import config_utils  # pylint: disable=g-import-not-at-top
  config_utils.apply_overrides(stage, _SET.value)
  # Every evaluated step must be saved and kept (also with --set train.checkpoint_every=...).
  missed = [s for s in _eval_steps() if s % int(t.checkpoint_every) and s != _STEPS.value]
  if missed:
    raise config_utils.ConfigError(
        f"train.checkpoint_every={t.checkpoint_every} does not save the --eval_steps {missed}; "
        "use a divisor of every evaluated step.")
  t.keep_every = math.gcd(*_eval_steps())
  config_utils.validate_config(stage)
  return config, stage


def _eval_steps() -> list:
  return sorted(int(s) for s in _EVAL_STEPS.value) or [_STEPS.value]


def workdir_of(run_dir: str) -> str:
  return os.path.join(run_dir, _VARIANT.value, _STAGE.value)


def cpu_seconds_file(workdir: str) -> str:
  return os.path.join(workdir, "cpu_seconds.json")


def train(run_dir: str) -> None:
  from vdm_jax import demo  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  _, stage = run_config(run_dir)
  build.build_dataset(stage)
  workdir = workdir_of(run_dir)
  done = demo.latest_step(workdir)
  if done >= _STEPS.value:
    print(f"{_VARIANT.value}: trained to step {done}.", flush=True)
    return
  os.makedirs(workdir, exist_ok=True)
  path = cpu_seconds_file(workdir)
  spent = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      spent = json.load(f)
  cpu0, wall0 = time.process_time(), time.perf_counter()

  # Record CPU seconds at every checkpoint: wrap the loop's save.
  original = loop.save_if_good

  def save_if_good(checkpointer, step, state, data_iter, config):
    ok = original(checkpointer, step, state, data_iter, config)
    if ok:
      spent[str(step)] = {"cpu_s": spent.get("_cpu_base", 0.0) + time.process_time() - cpu0,
                          "wall_s": spent.get("_wall_base", 0.0) + time.perf_counter() - wall0}
      with open(path, "w", encoding="utf-8") as f:
        json.dump(spent, f)
    return ok

  last = spent.get(str(done), {})
  spent["_cpu_base"], spent["_wall_base"] = last.get("cpu_s", 0.0), last.get("wall_s", 0.0)
  loop.save_if_good = save_if_good
  loop.train_and_evaluate(stage, workdir)


def caption_swap_gap(stage, config, *, num_clips: int) -> dict:
  """x-MSE of the EMA model on real test clips with their caption vs one word swapped."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.data.moving_shapes import grammar  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import conditioning as cond_lib  # pylint: disable=g-import-not-at-top
  c = stage.config
  real = build.load_split_examples(c, "test", num_clips)
  clips = cascade_eval.real_at_geometry(real["video"], float(real["fps"][0]), c)
  x = clips.astype(np.float32) / 127.5 - 1.0
  prompts = list(real["caption"])
  opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
  colors, shapes = grammar.COLOR_NAMES, tuple(grammar.SHAPES)

  def swap(p, kind):
    words = p.split(" ")
    for i, w in enumerate(words):
      if kind == "motion" and w in opposite:
        words[i] = opposite[w]
        return " ".join(words)
      if kind == "shape" and w in shapes:
        words[i] = shapes[(shapes.index(w) + 1) % len(shapes)]
        return " ".join(words)
      if kind == "color" and w in colors:
        words[i] = colors[(colors.index(w) + 1) % len(colors)]
        return " ".join(words)
    return None

  @jax.jit
  def xhat(params, z, logsnr, cond):
    out = stage.model.apply({"params": params}, z, logsnr, **cond, train=False)
    from vdm_jax.diffusion import parameterization as par  # pylint: disable=g-import-not-at-top
    return par.to_x_and_eps(prediction=c.diffusion.prediction, model_output=out, z=z,
                            logsnr=logsnr)[0]

  key = jax.random.key(7)
  noise = np.asarray(jax.random.normal(key, x.shape), np.float32)
  result = {}
  for kind in ("motion", "shape", "color"):
    rows = [i for i, p in enumerate(prompts) if swap(p, kind) is not None]
    if not rows:
      continue
    own = [prompts[i] for i in rows]
    other = [swap(prompts[i], kind) for i in rows]
    errs = {}
    for label, caps in (("own", own), ("swapped", other)):
      cond, _ = cond_lib.stage_conditioning(stage, prompts=caps, n=len(rows))
      for lam in _SWAP_LOGSNR:
        alpha = np.sqrt(1 / (1 + np.exp(-lam)))
        sigma = np.sqrt(1 / (1 + np.exp(lam)))
        z = alpha * x[rows] + sigma * noise[rows]
        logsnr = np.full((len(rows),), lam, np.float32)
        pred = np.asarray(xhat(stage.params, z, logsnr, cond))
        errs[(label, lam)] = float(np.mean((pred - x[rows]) ** 2))
    result[kind] = {str(lam): round(errs[("swapped", lam)] / errs[("own", lam)] - 1, 4)
                    for lam in _SWAP_LOGSNR}
    result[kind]["clips"] = len(rows)
  return result


def sr_eval(config, c, workdir: str, step: int) -> dict:
  """An SR stage fed the real low-res test clips: MSE to the real clip and detector reads."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import sampler  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  names = list(config.cascade.order)
  prev = config.cascade.stages[names[names.index(_STAGE.value) - 1]]
  real = build.load_split_examples(c, "test", _EVAL_VIDEOS.value)
  fps = float(real["fps"][0])
  high = cascade_eval.real_at_geometry(real["video"], fps, c).astype(np.float32) / 127.5 - 1
  low = cascade_eval.real_at_geometry(real["video"], fps, prev).astype(np.float32) / 127.5 - 1
  captions = list(real["caption"])
  stage = stage_lib.load_stage(c, workdir, step=step)
  videos = sampler.sample_stage_batched(stage, key=jax.random.key(0), prompts=captions,
                                        lowres=low, batch_size=16)
  if low.shape[1] != high.shape[1]:    # the naive upsampling: frame repetition / bilinear
    naive = np.repeat(low, high.shape[1] // low.shape[1], axis=1)
  else:
    naive = np.asarray(jax.image.resize(low, high.shape, "bilinear"))
  return {"mse": float(np.mean((videos - high) ** 2)),
          "naive_mse": float(np.mean((naive - high) ** 2)),
          "read": _read(videos, captions, float(c.fps)),
          "naive_read": _read(naive, captions, float(c.fps)),
          "real_read": _read(high, captions, float(c.fps))}


def _read(videos, captions, fps):
  """Detector accuracies of videos (float in [-1, 1]) and their mean object area (px)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.data.moving_shapes import detectors  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  clips = evaluate.to_uint8(videos)
  result = evaluate.evaluate_videos(clips, captions, fps=fps, compute_fvd=False)
  areas = [float(np.nanmean(d.objects[0].areas)) for d in detectors.detect_batch(clips, fps)
           if d.objects]
  out = {k: round(float(v), 4) for k, v in result["caption_accuracy"].items()
         if isinstance(v, float)}
  out["mean_area_px"] = round(float(np.mean(areas)), 2) if areas else None
  return out


def step_and_sampling_cost(workdir: str, cascade, scores: dict, prompts: list) -> dict:
  """What a training step and a sampled video cost: the median wall seconds per step of the
  training log (compilation excluded; one pinned core, so about CPU seconds), XLA's FLOP count
  per step, and the seconds per sampled video, first pass (compilation included) and a second
  pass of one batch of 16 (compiled)."""
  from experiments.benchmarks import common  # pylint: disable=g-import-not-at-top
  out = {"sample_s_per_video_first_pass": round(scores["seconds_per_video"], 3),
         **common.training_log_cost(workdir)}
  prompts = (list(prompts) * 16)[:16]
  start = time.perf_counter()
  cascade.sample(prompts, batch_size=16)
  out["sample_s_per_video"] = round((time.perf_counter() - start) / len(prompts), 3)
  return out


def evaluate(run_dir: str, step: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  config, stage_cfg = run_config(run_dir)
  workdir = workdir_of(run_dir)
  out = {"variant": _VARIANT.value, "stage": _STAGE.value, "step": step, "set": _SET.value,
         "dit": _DIT.value, "rewrite": _REWRITE.value}
  path = cpu_seconds_file(workdir)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      out.update(json.load(f).get(str(step), {}))
  start = time.perf_counter()
  if _STAGE.value == "base":
    config.cascade.stages["base"] = stage_cfg
    cascade = cascade_lib.Cascade.from_config(config, os.path.join(run_dir, _VARIANT.value),
                                              steps={"base": step})
    config.eval.fvd = _FVD.value
    scores, _, prompts, _ = cascade_eval.score_held_out(
        config, cascade, num_videos=_EVAL_VIDEOS.value, batch_size=16)
    out.update({k: scores[k] for k in ("fvd", "fvd_num_videos", "fvd_note") if k in scores})
    out["cost"] = step_and_sampling_cost(workdir, cascade, scores, prompts)
    st = scores["stages"]["base"]
    out["caption_accuracy"] = st["caption_accuracy"]
    out["caption_accuracy_held_out"] = st.get("caption_accuracy_held_out")
    out["consistency"] = st.get("consistency")
    stage = cascade.stages[0]
    out["swap_gap"] = caption_swap_gap(stage, stage_cfg, num_clips=_EVAL_VIDEOS.value)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import time_reversal  # pylint: disable=g-import-not-at-top
    out["time_reversal"] = time_reversal.reversal_residual(stage, num_clips=32)
  else:
    out.update(sr_eval(config, stage_cfg, workdir, step))
  out["eval_seconds"] = round(time.perf_counter() - start, 1)
  del np
  return out


def main(argv):
  del argv
  run_dir = os.path.abspath(_RUN_DIR.value)
  os.makedirs(run_dir, exist_ok=True)
  install_rewrite(_rewrites())
  if _PHASE.value in ("train", "all"):
    train(run_dir)
  if _PHASE.value in ("eval", "all"):
    from vdm_jax import demo  # pylint: disable=g-import-not-at-top
    done = demo.latest_step(workdir_of(run_dir))
    for step in _eval_steps():
      if step > done:
        print(f"step {step} not trained yet (latest {done}); skipped.", flush=True)
        continue
      r = evaluate(run_dir, step)
      print(json.dumps(r), flush=True)
      with open(_OUT.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  app.run(main)
