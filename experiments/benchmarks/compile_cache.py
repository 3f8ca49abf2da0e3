"""The persistent compilation cache, measured: the same job run twice in fresh processes, the
second reading the compiled programs that the first wrote (vdm_jax/compile_cache.py).

    python experiments/benchmarks/compile_cache.py [--demo] [--out=compile_cache_cpu.json]

Jobs: a tiny training run (`python -m vdm_jax.main --mode=train --config=configs/tiny.py`,
--steps optimizer steps into a fresh workdir each time, after its data were built once) and,
with --demo, `python -m vdm_jax.demo --num_videos=8` (the shipped cascade: load, sample the demo
prompts and 8 held-out prompts, evaluate). Each job runs once with an empty cache directory
and once more with the filled one; wall times and the cache's size are printed as a table and
written as JSON with the machine.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dir_mb(path):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path)
             for f in fs) / 2**20


def _timed(cmd, env):
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return wall, proc


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--demo", action="store_true")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "compile_cache_cpu.json"))
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="vdm_cache_bench_")
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  tiny = [sys.executable, "-m", "vdm_jax.main", "--config=configs/tiny.py",
          f"--config.data.data_dir={tmp}/data",
          f"--config.text.store_path={tmp}/text_store.safetensors"]
  _timed(tiny + ["--mode=build_data", "--compile_cache=off"], env)
  jobs = {"tiny training": lambda run, cache: tiny + [
      "--mode=train", f"--workdir={tmp}/train_{run}", f"--config.train.num_steps={args.steps}",
      f"--compile_cache={cache}"]}
  if args.demo:
    jobs["make demo (8 held-out prompts)"] = lambda run, cache: [
        sys.executable, "-m", "vdm_jax.demo", f"--out={tmp}/demo_{run}", "--num_videos=8",
        f"--compile_cache={cache}"]
  rows = []
  for name, command in jobs.items():
    cache = os.path.join(tmp, "cache_" + name.split()[0])
    first, _ = _timed(command("first", cache), env)
    size = _dir_mb(cache)
    second, _ = _timed(command("second", cache), env)
    rows.append({"job": name, "first_s": round(first, 1), "second_s": round(second, 1),
                 "saved_s": round(first - second, 1), "cache_mb": round(size, 1)})
  shutil.rmtree(tmp, ignore_errors=True)
  machine = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs "
             f"usable by this run, {platform.platform()}")
  print(f"Machine: {machine}")
  print("| job | first run s (empty cache) | second run s (filled) | saved s | cache MB |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['job']} | {r['first_s']} | {r['second_s']} | {r['saved_s']} | "
          f"{r['cache_mb']} |")
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"machine": machine, "steps": args.steps, "rows": rows}, f, indent=1)
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
