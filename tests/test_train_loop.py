"""The training loop end to end with the real U-Net (tiny) and the real grain pipeline:
metrics, samples, an exact resume after a real SIGTERM, a SIGTERM while compiling, and the
fallback from a corrupted newest checkpoint (the run replays to the same parameters)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vdm_jax.data import build

import train_worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
NUM_STEPS = 24
KILL_AFTER_STEP = 5


def _overrides(tmp):
  return {
      "frames": 4, "height": 8, "width": 8,
      "model.channel_mult": [1], "model.spatial_attention": [True],
      "model.temporal_mixing": ["attention"], "model.base_channels": 8,
      "model.num_heads": 2, "model.head_dim": 8,
      "model.num_groups": 4, "model.cond_embed_dim": 32,
      "data.data_dir": str(tmp / "data"), "data.num_train_examples": 16,
      "data.num_eval_examples": 4, "data.source_frames": 8, "data.source_resolution": 16,
      "text.store_path": str(tmp / "text_store.safetensors"),
      "train.batch_size": 4, "train.num_steps": NUM_STEPS, "train.warmup_steps": 4,
      "train.log_every": 1, "train.checkpoint_every": 8, "train.sample_every": 0,
      "sharding.mesh_shape": [1, 2, 1],
      "sample.num_steps": 2, "sample.prompts": ["a red circle moving left"],
  }


def _start(workdir, overrides, tmp, **extra_env):
  env = dict(os.environ, **extra_env, JAX_PLATFORMS="cpu",
             # Fast compiles for a tiny model; every run uses the same flags (same programs).
             XLA_FLAGS=("--xla_force_host_platform_device_count=2 "
                        "--xla_backend_optimization_level=0 "
                        "--xla_llvm_disable_expensive_passes=true"),
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  log = open(str(workdir) + ".log", "w")
  proc = subprocess.Popen([sys.executable, WORKER, str(workdir), json.dumps(overrides)],
                          env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, log


def _finish(proc, log, timeout=300):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  text = open(log.name).read()
  assert proc.returncode == 0, f"worker exited {proc.returncode}:\n{text[-5000:]}"
  return text


def _metrics(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r for r in rows}


def _last_logged_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  steps = [json.loads(line)["step"] for line in open(path) if line.endswith("\n")]
  return max(steps, default=0)


def _run_all(tmp):
  overrides = _overrides(tmp)
  build.build_dataset(train_worker.make_config(overrides))

  # The uninterrupted reference, which also writes periodic samples.
  full = tmp / "full"
  proc, log = _start(full, {**overrides, "train.sample_every": 12}, tmp)
  full_log = _finish(proc, log)

  # The same run, stopped by SIGTERM mid-way, then resumed in a new process.
  cut = tmp / "cut"
  proc, log = _start(cut, overrides, tmp)
  deadline = time.time() + 300
  while _last_logged_step(cut) < KILL_AFTER_STEP and proc.poll() is None:
    assert time.time() < deadline, "the interrupted run made no progress"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  cut_log = _finish(proc, log)
  stopped_at = _last_logged_step(cut)

  # Preempted again while compiling: it stops before its first step, writing nothing.
  saved = sorted(os.listdir(cut / "checkpoints"))
  early_log = _finish(*_start(cut, overrides, tmp, VDM_TEST_SIGTERM_WHILE_COMPILING="1"))
  early = dict(log=early_log, saved_before=saved,
               saved_after=sorted(os.listdir(cut / "checkpoints")),
               last_step=_last_logged_step(cut))
  resume_log = _finish(*_start(cut, overrides, tmp))

  # Bytes flipped in the finished run's newest checkpoint: the next run sets it aside,
  # restores the one before and replays to the same parameters (_check_exact_resume).
  newest = max(int(s) for s in os.listdir(cut / "checkpoints") if s.isdigit())
  data_files = [p for p in (cut / "checkpoints" / str(newest) / "state").rglob("*")
                if p.is_file() and p.parent.name == "d"]
  victim = max(data_files, key=lambda p: p.stat().st_size)
  blob = bytearray(victim.read_bytes())
  for i in range(len(blob) // 2, len(blob) // 2 + 64):
    blob[i] ^= 0xFF
  victim.write_bytes(bytes(blob))
  fallback_log = _finish(*_start(cut, overrides, tmp))
  fallback = dict(log=fallback_log, newest=newest, victim=victim.name,
                  kept=[s for s in os.listdir(cut / "checkpoints") if s.startswith("corrupt-")])
  return dict(full=full, cut=cut, full_log=full_log, cut_log=cut_log, resume_log=resume_log,
              stopped_at=stopped_at, early=early, fallback=fallback)


def test_loop_resumes_exactly_after_sigterm_and_writes_metrics_and_samples(tmp_path):
  """One test (its three training runs are expensive): pytest-xdist would repeat a shared
  module fixture in every worker that runs one of its tests."""
  runs = _run_all(tmp_path)
  _check_sigterm(runs)
  _check_sigterm_while_compiling(runs)
  _check_corrupt_checkpoint_fallback(runs)
  _check_exact_resume(runs)
  _check_metrics_logs_and_config(runs)
  _check_samples(runs)


def _check_sigterm(runs):
  stopped = runs["stopped_at"]
  assert KILL_AFTER_STEP <= stopped < NUM_STEPS, "the signal arrived mid-run"
  assert f"Preempted: checkpoint of step {stopped} saved" in runs["cut_log"]
  assert f"Restored step {stopped}" in runs["resume_log"]


def _check_sigterm_while_compiling(runs):
  early = runs["early"]
  assert "Stopped by a signal before the first step" in early["log"]
  assert early["saved_after"] == early["saved_before"], "nothing written"
  assert early["last_step"] == runs["stopped_at"], "no step trained"


def _check_corrupt_checkpoint_fallback(runs):
  fb = runs["fallback"]
  assert f"{runs['cut']}/checkpoints/{fb['newest']} is corrupt" in fb["log"]
  assert fb["victim"] in fb["log"], "the damaged file is named"
  assert len(fb["kept"]) == 1 and fb["kept"][0].startswith(f"corrupt-{fb['newest']}-")
  assert f"Restored step {fb['newest'] - 8} " in fb["log"]


def _check_exact_resume(runs):
  full, cut = _metrics(runs["full"]), _metrics(runs["cut"])
  assert sorted(full) == sorted(cut) == list(range(1, NUM_STEPS + 1))
  for step in full:
    assert cut[step]["loss"] == full[step]["loss"], f"loss differs at step {step}"
    assert cut[step]["grad_norm"] == full[step]["grad_norm"], f"grad norm differs at {step}"
  a = np.load(os.path.join(runs["full"], "final_params.npz"))
  b = np.load(os.path.join(runs["cut"], "final_params.npz"))
  assert sorted(a.files) == sorted(b.files) and any(k.startswith("ema") for k in a.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_metrics_logs_and_config(runs):
  full = runs["full"]
  rows = _metrics(full)
  last = rows[NUM_STEPS]
  for key in ("loss", "grad_norm", "lr", "ema_decay", "steps_per_sec", "examples_per_sec",
              "tflops_per_device"):
    assert np.isfinite(last[key]), key
  assert "mfu" not in last, "CPU has no known peak: MFU is omitted"
  assert last["examples_per_sec"] == pytest.approx(4 * last["steps_per_sec"])
  assert f"step {NUM_STEPS}/{NUM_STEPS} | loss" in runs["full_log"]
  assert json.load(open(os.path.join(full, "config.json")))["model"]["base_channels"] == 8
  assert os.listdir(os.path.join(full, "tensorboard"))
  assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["16", "24"]


def _check_samples(runs):
  for step in (12, 24):
    d = os.path.join(runs["full"], "samples", f"step_{step:06d}")
    assert sorted(os.listdir(d)) == ["000.gif", "000.mp4", "prompts.txt"]
    assert os.path.getsize(os.path.join(d, "000.mp4")) > 0
    assert "a red circle moving left" in open(os.path.join(d, "prompts.txt")).read()
