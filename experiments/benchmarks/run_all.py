"""The benchmark suite: one command, on whatever machine it runs on.

    python -m experiments.benchmarks.run_all                   # --size=gpu on a GPU/TPU, else cpu
    python -m experiments.benchmarks.run_all --size=smoke      # CI-sized, about a minute
    python -m experiments.benchmarks.run_all --size=gpu --sections=train,variants
    python -m experiments.benchmarks.run_all --size=gpu --dry-run=lower   # check the plan on CPU

Writes `results_<size>.json` and `results_<size>.md` into --out (default: this directory; a
temporary directory for smoke) and prints the markdown. The JSON holds every measurement, the
plan, the machine (CPU model, cores, jax version, backend, device kind and memory) and the load
average at the start and at the end. See README.md in this directory for what each section
measures and for the results.

--dry-run=lower traces and lowers every case (no compile, nothing runs); --dry-run=compile also
compiles each one abstractly (memory analysis, XLA FLOPs). --tiny-models replaces every model
of the plan by the smoke model of its kind (stage layout kept), so a dry run of the GPU plan
fits a CPU test.
"""
import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time

import jax

from experiments.benchmarks import cases
from experiments.benchmarks import common
from experiments.benchmarks import report
from experiments.benchmarks import sections

SECTIONS = ("max_batch", "train", "variants", "sampling", "breakdown")
HERE = os.path.dirname(os.path.abspath(__file__))


def default_size() -> str:
  return "gpu" if jax.default_backend() in ("gpu", "tpu") else "cpu"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description="vdm_jax benchmark suite")
  p.add_argument("--size", choices=tuple(cases.PLANS), default=None,
                 help="plan to run (default: gpu on an accelerator, cpu otherwise)")
  p.add_argument("--out", default=None, help="directory for results_<size>.json / .md")
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"comma-separated subset of {SECTIONS}")
  p.add_argument("--dry-run", choices=("lower", "compile"), default=None,
                 help="trace/lower (and compile) every case without running anything")
  p.add_argument("--tiny-models", action="store_true",
                 help="replace each model by the smoke model of its kind (dry runs on CPU)")
  p.add_argument("--devices", type=int, default=1,
                 help="devices of the data-parallel mesh (default 1: per-device figures)")
  p.add_argument("--memory-limit-gb", type=float, default=None,
                 help="memory limit of the largest-batch search (default: 90%% of the "
                      "device's bytes_limit; none on CPU)")
  p.add_argument("--repeats", type=int, default=None, help="override the plan's repeats")
  p.add_argument("--only-sizes", default="",
                 help="comma-separated sizes: restrict every section to these (split a GPU "
                      "run over several calls)")
  p.add_argument("--grad-accum", type=int, default=1,
                 help="train.grad_accum_steps of every train case (the batch is split into "
                      "this many microbatches; one optimizer update per step)")
  p.add_argument("--train-batch", default="",
                 help="per-size train batches, e.g. base_gpu_1b:6,base_gpu_350m:24")
  args = p.parse_args(argv)
  args.only_sizes = tuple(x.strip() for x in args.only_sizes.split(",") if x.strip())
  bad = sorted(set(args.only_sizes) - set(cases.SIZES))
  if bad:
    p.error(f"unknown sizes {bad}; choose from {sorted(cases.SIZES)}")
  batches = {}
  for item in (x.strip() for x in args.train_batch.split(",") if x.strip()):
    size, _, n = item.partition(":")
    if size not in cases.SIZES or not n.isdigit() or int(n) < 1:
      p.error(f"--train-batch entry {item!r}: use size:N with a known size and N >= 1")
    batches[size] = int(n)
  args.train_batch = batches
  if args.grad_accum < 1:
    p.error(f"--grad-accum={args.grad_accum} must be >= 1")
  chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = sorted(set(chosen) - set(SECTIONS))
  if unknown:
    p.error(f"unknown sections {unknown}; choose from {SECTIONS}")
  args.sections = tuple(s for s in SECTIONS if s in chosen)
  if args.devices < 1 or args.devices > jax.device_count():
    p.error(f"--devices={args.devices}: this machine has {jax.device_count()} devices")
  return args


def run(args) -> dict:
  """Runs the chosen sections and returns the results dict (also written as JSON/markdown)."""
  size = args.size or default_size()
  plan = cases.PLANS[size]
  if args.repeats:
    plan = dataclasses.replace(plan, repeats=args.repeats,
                               sample_repeats=min(plan.sample_repeats, args.repeats))
  if args.only_sizes:
    keep = lambda sizes: tuple(x for x in sizes if x in args.only_sizes)
    plan = dataclasses.replace(
        plan, train=keep(plan.train), sampling=keep(plan.sampling),
        max_batch_sizes=keep(plan.max_batch_sizes),
        variant_size=plan.variant_size if plan.variant_size in args.only_sizes else None,
        breakdown_size=(plan.breakdown_size if plan.breakdown_size in args.only_sizes
                        else None))
  if args.train_batch:
    plan = dataclasses.replace(plan, train_batches=dict(plan.train_batches, **args.train_batch))
  limit = None
  if args.memory_limit_gb:
    limit = args.memory_limit_gb * 2**30
  elif common.device_memory_bytes() is not None:
    limit = 0.9 * common.device_memory_bytes()
  ctx = sections.Context(plan=plan, execute=args.dry_run is None,
                         compile_abstract=args.dry_run == "compile",
                         devices=tuple(jax.local_devices()[:args.devices]),
                         memory_limit_bytes=limit, tiny_models=args.tiny_models,
                         grad_accum=args.grad_accum)
  start = time.perf_counter()
  results = dict(
      benchmark="vdm_jax suite", size=size, dry_run=args.dry_run, tiny_models=args.tiny_models,
      grad_accum=args.grad_accum,
      started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=" ".join(["python -m experiments.benchmarks.run_all"] + sys.argv[1:]),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
      machine=common.machine_info(),
      plan=dataclasses.asdict(plan), sections=list(args.sections))
  sections.log(f"machine: {common.describe_machine(results['machine'])}; load "
               f"{results['machine']['load_average']}")
  if "max_batch" in args.sections:
    results["max_batch"] = sections.max_batch(ctx)
  if "train" in args.sections:
    results["train"] = sections.train(ctx)
  if "variants" in args.sections and plan.variant_size:
    baseline = next((r for r in results.get("train", []) if r["size"] == plan.variant_size),
                    None)
    results["variants"] = sections.variants(ctx, baseline)
  if "sampling" in args.sections:
    results["sampling"] = sections.sampling(ctx)
  if "breakdown" in args.sections and plan.breakdown_size:
    results["breakdown"] = sections.breakdown(ctx)
  results["machine_end"] = common.machine_info()
  results["wall_s"] = time.perf_counter() - start
  results["ratios"] = report.ratios(results)
  return results


def output_paths(args, size: str) -> tuple:
  """(json path, markdown path); a partial run (sections or sizes chosen) gets its own name."""
  out = args.out
  if out is None:
    out = (os.path.join(tempfile.gettempdir(), "vdm_jax_bench_smoke") if size == "smoke"
           else HERE)
  os.makedirs(out, exist_ok=True)
  stem = f"results_{size}" + (f"_dryrun_{args.dry_run}" if args.dry_run else "")
  if args.sections != SECTIONS:
    stem += "_" + "-".join(args.sections)
  if args.only_sizes:
    stem += "_" + "-".join(args.only_sizes)
  if args.grad_accum > 1:
    stem += f"_accum{args.grad_accum}"
  return os.path.join(out, stem + ".json"), os.path.join(out, stem + ".md")


def main(argv=None) -> dict:
  # Let the largest-batch search and the big batches use most of an accelerator's memory
  # (jax's default is 75%); set before anything initializes a backend, recorded in the JSON.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  args = parse_args(argv)
  results = run(args)
  json_path, md_path = output_paths(args, results["size"])
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, default=str)
  text = report.markdown(results, title=f"Results: `--size={results['size']}`")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)
  print(f"\nwrote {json_path} and {md_path}")
  return results


if __name__ == "__main__":
  main()
