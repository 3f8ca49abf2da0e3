"""The markdown tables of a suite run (`results` as run_all writes it to JSON)."""
from typing import Optional

from experiments.benchmarks import common


def _f(x, fmt="{:.3g}", none="n/a"):
  return none if x is None else fmt.format(x)


def _mib(x):
  return _f(None if x is None else x / 2**20, "{:.1f}")


def _ms(row, key="step_s"):
  return _f(row.get(key) and 1e3 * row[key], "{:.1f}")


def _spread(row):
  t = row.get("timing")
  return _f(t and 100 * t["spread"], "{:.0f}%")


def _gflop(x):
  return _f(None if x is None else x / 1e9, "{:.3g}")


def _flops(row):
  """XLA's compiled FLOPs of a row, or its unoptimized count (dry runs)."""
  return row.get("flops") or row.get("flops_unoptimized")


def _model_tflops(base, row):
  """TFLOP/s per device counting the baseline's FLOPs (no remat recomputation) over the
  variant's step time: what MFU should use for a remat variant, since XLA's count of a remat
  program includes the recomputed forward."""
  flops, step = _flops(base), row.get("step_s")
  return flops / step / 1e12 if (flops and step) else None


def _ratio(a, b):
  return None if (a is None or b is None or not b) else a / b


def header(results: dict) -> list:
  m0, m1 = results["machine"], results["machine_end"]
  dry = f" (dry run: {results['dry_run']})" if results["dry_run"] else ""
  lines = [f"Machine: {common.describe_machine(m0)}.",
           f"Size `{results['size']}`{dry}, "
           f"started {results['started']}, {results['wall_s']:.0f} s wall. "
           f"Load average (1/5/15 min) at the start {m0['load_average']}, at the end "
           f"{m1['load_average']}.",
           f"XLA_FLAGS: `{results['xla_flags'] or '(none)'}`, XLA_PYTHON_CLIENT_MEM_FRACTION "
           f"{results.get('mem_fraction')}. Timings: median of "
           f"{results['plan']['repeats']} calls (samplers: {results['plan']['sample_repeats']}"
           f"{' rounds' if results['plan'].get('interleave') else ' for > 64 steps'}) after "
           f"{results['plan']['warmup']} warm-up call(s), each ended by block_until_ready; "
           f"'spread' = (max - min) / median."]
  if m0["backend"] == "cpu":
    lines.append("CPU backend: absolute times only compare variants within this run (ratios "
                 "below); MFU is not defined (no peak rate for a CPU). XLA's CPU compiler does "
                 "not realize remat's memory savings in its buffer assignment (jax issue "
                 "#19822), so the variants' compiled memory does not move with remat here; the "
                 "breakdown's saved-activation column measures them by tracing.")
  return lines


def train_table(rows: list) -> list:
  lines = ["| size | kind | params | T x H x W | batch | dtype | attention | remat | step ms | "
           "spread | examples/s | frames/s | GFLOP/step | TFLOP/s/dev | MFU | peak MiB "
           "(temp) | compile (dry: lower) s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    geo = "x".join(str(g) for g in r.get("geometry", []))
    common_cells = (f"| {r['size']} | {r.get('kind', '')} | {_f(r.get('params'), '{:.3g}')} | "
                    f"{geo} | {r.get('batch_size', '')} | {r.get('dtype', '')} | "
                    f"{r.get('attention', '')} | {r.get('remat', '')} |")
    if "error" in r or "skipped" in r:
      lines.append(common_cells + f" {r.get('error') or r.get('skipped')} |" + " |" * 8)
      continue
    flops = _flops(r)
    peak = f"{_mib(r.get('peak_bytes'))} ({_mib(r.get('temp_bytes'))})"
    lines.append(
        common_cells + f" {_ms(r)} | {_spread(r)} | {_f(r.get('examples_per_s'))} | "
        f"{_f(r.get('frames_per_s'))} | {_gflop(flops)} | {_f(r.get('tflops_per_device'))} | "
        f"{_f(r.get('mfu') and 100 * r['mfu'], '{:.1f}%')} | {peak} | "
        f"{_f(r.get('compile_s', r.get('lower_s')), '{:.0f}')} |")
  return lines


def variants_table(rows: list) -> list:
  base = next((r for r in rows if r.get("variant") == "baseline"), {})
  lines = [f"Baseline: {base.get('size')} ({base.get('dtype')}, {base.get('attention')} "
           f"attention, remat {base.get('remat')}, batch {base.get('batch_size')}). 'model "
           f"TFLOP/s' counts the baseline's FLOPs (no recomputation) over each variant's time.",
           "",
           "| variant | step ms | spread | time / baseline | GFLOP/step | FLOPs / baseline | "
           "model TFLOP/s/dev | peak MiB | peak / baseline | temp MiB | temp / baseline |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r or "skipped" in r:
      lines.append(f"| {r['variant']} | {r.get('error') or r.get('skipped')} |" + " |" * 9)
      continue
    ratio = lambda k: _f(_ratio(r.get(k), base.get(k)), "{:.2f}x")
    lines.append(f"| {r['variant']} | {_ms(r)} | {_spread(r)} | {ratio('step_s')} | "
                 f"{_gflop(_flops(r))} | {_f(_ratio(_flops(r), _flops(base)), '{:.2f}x')} | "
                 f"{_f(_model_tflops(base, r))} | {_mib(r.get('peak_bytes'))} | "
                 f"{ratio('peak_bytes')} | {_mib(r.get('temp_bytes'))} | {ratio('temp_bytes')} |")
  return lines


def sampling_table(rows: list) -> list:
  lines = ["| stage (size) | mode | steps | U-Net evals / video | s / video | spread | videos/s | "
           "latency / 256-step teacher | TFLOP/s/dev | MFU |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ref = next((x for x in rows if x["size"] == r["size"] and x["mode"] == "teacher"
                and x["num_steps"] == 256 and "s_per_video" in x), None)
    head = f"| {r['kind']} ({r['size']}) | {r['mode']} | {r['num_steps']} |"
    if "error" in r:
      lines.append(head + f" {r['error']} |" + " |" * 6)
      continue
    rel = _ratio(r.get("s_per_video"), ref and ref["s_per_video"])
    lines.append(head + f" {r.get('network_evaluations_per_video', '')} | "
                 f"{_f(r.get('s_per_video'), '{:.4g}')} | {_spread(r)} | "
                 f"{_f(r.get('videos_per_s'))} | {_f(rel, '{:.4f}')} | "
                 f"{_f(r.get('tflops_per_device'))} | "
                 f"{_f(r.get('mfu') and 100 * r['mfu'], '{:.1f}%')} |")
  return lines


def max_batch_table(rows: list) -> list:
  lines = ["| size | remat | largest batch | peak GiB at it | limit GiB | resolved | compiles |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r or "skipped" in r:
      lines.append(f"| {r['size']} | {r['remat']} | {r.get('error') or r.get('skipped')} |"
                   + " |" * 4)
      continue
    gib = lambda x: _f(None if x is None else x / 2**30, "{:.1f}")
    lines.append(f"| {r['size']} | {r['remat']} | {r.get('batch_size')} | "
                 f"{gib(r.get('peak_bytes'))} | {gib(r.get('limit_bytes'))} | "
                 f"{r.get('resolved')} | {r.get('compiles')} |")
  return lines


def breakdown_tables(b: dict) -> list:
  total = b["total_flops"]
  classes = list(b["by_class"])
  lines = [f"{b['size']}: {_f(b.get('params'), '{:.3g}')} parameters, "
           f"{'x'.join(str(g) for g in b['geometry'])} (T x H x W), {b['dtype']}, one example; "
           f"{_gflop(total)} GFLOP per train step by the jaxpr count "
           f"(XLA's unoptimized HLO: "
           f"{_gflop(b['per_remat']['none']['xla_unoptimized_flops'])} GFLOP; it counts "
           f"only the taps of a padded conv that fall inside the image).", "",
           "| block | " + " | ".join(classes) + " | block total |",
           "|---|" + "---|" * (len(classes) + 1)]
  for block, row in b["matrix"].items():
    cells = " | ".join(_f(100 * row[c] / total, "{:.1f}%") for c in classes)
    lines.append(f"| {block} | {cells} | **{100 * b['by_block'][block] / total:.1f}%** |")
  lines.append("| **class total** | " + " | ".join(
      f"**{100 * b['by_class'][c] / total:.1f}%**" for c in classes) + " | 100% |")
  if b.get("level_share"):
    lines += ["", "| U-Net level | " + " | ".join(classes) + " | level total |",
              "|---|" + "---|" * (len(classes) + 1)]
    for level, row in b["level_share"].items():
      cells = " | ".join(f"{100 * row[c]:.1f}%" for c in classes)
      lines.append(f"| {level} | {cells} | **{100 * sum(row.values()):.1f}%** |")
  none_res = b["per_remat"].get("none", {})
  if none_res.get("residuals_batch2_by_producer"):
    tot = sum(none_res["residuals_batch2_by_producer"].values())
    parts = ", ".join(f"{k} {100 * v / tot:.1f}%" for k, v in sorted(
        none_res["residuals_batch2_by_producer"].items(), key=lambda kv: -kv[1]))
    dts = ", ".join(f"{k} {100 * v / tot:.1f}%" for k, v in sorted(
        none_res["residuals_batch2_by_dtype"].items(), key=lambda kv: -kv[1]))
    lines += ["", f"Saved for the backward pass at remat none, batch 2, by producer: {parts}; "
              f"by dtype: {dts}."]
  lines += ["", "| remat | GFLOP (jaxpr) | vs none | conv GFLOP | dense GFLOP | saved "
            "activations MiB / example | vs none | fixed residuals MiB | predicted largest "
            "batch, 80 GB |", "|---|---|---|---|---|---|---|---|---|"]
  none = b["per_remat"].get("none", {})
  for remat, e in b["per_remat"].items():
    per = e.get("residual_bytes_per_example")
    lines.append(
        f"| {remat} | {_gflop(e['jaxpr_flops'])} | "
        f"{_f(_ratio(e['jaxpr_flops'], none.get('jaxpr_flops')), '{:.3f}x')} | "
        f"{_gflop(e['by_class']['conv'])} | {_gflop(e['by_class']['dense'])} | {_mib(per)} | "
        f"{_f(_ratio(per, none.get('residual_bytes_per_example')), '{:.3f}x')} | "
        f"{_mib(e.get('residual_bytes_fixed'))} | {e.get('predicted_max_batch_80gb')} |")
  return lines


def ratios(results: dict) -> dict:
  """Within-run ratios: remat and dtype time/memory ratios, student/teacher latency."""
  out = {}
  var = {r.get("variant"): r for r in results.get("variants", [])}
  base = var.get("baseline", {})
  for name, r in var.items():
    if name == "baseline" or "step_s" not in r or "step_s" not in base:
      continue
    out[f"time {name} / baseline"] = _ratio(r["step_s"], base["step_s"])
    out[f"peak memory {name} / baseline"] = _ratio(r.get("peak_bytes"), base.get("peak_bytes"))
  for r in results.get("sampling", []):
    ref = next((x for x in results["sampling"] if x["size"] == r["size"]
                and x["mode"] == "teacher" and x["num_steps"] == 256 and "s_per_video" in x),
               None)
    if ref is not None and r is not ref and "s_per_video" in r:
      out[f"latency {r['size']} {r['mode']} {r['num_steps']} / teacher 256"] = _ratio(
          r["s_per_video"], ref["s_per_video"])
  return {k: v for k, v in out.items() if v is not None}


def markdown(results: dict, title: Optional[str] = None) -> str:
  lines = [f"### {title or 'Benchmark suite results'}", ""] + header(results) + [""]
  sections = (("train", "Train step", train_table), ("variants", "Variants", variants_table),
              ("sampling", "Sampling", sampling_table),
              ("max_batch", "Largest batch that fits", max_batch_table))
  for key, name, fn in sections:
    if results.get(key):
      lines += [f"#### {name}", ""] + fn(results[key]) + [""]
  if results.get("breakdown"):
    lines += ["#### FLOPs of the base train step by block and operation class", ""]
    lines += breakdown_tables(results["breakdown"]) + [""]
  rat = ratios(results)
  if rat:
    lines += ["#### Ratios within this run", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in rat.items()] + [""]
  return "\n".join(lines)


def main(argv=None):
  """Re-renders the markdown of a results JSON: python -m experiments.benchmarks.report F."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  paths = (argv if argv is not None else sys.argv[1:])
  if len(paths) != 1:
    raise SystemExit("usage: python -m experiments.benchmarks.report results_<size>.json")
  with open(paths[0], encoding="utf-8") as f:
    results = json.load(f)
  text = markdown(results, title=f"Results: `--size={results['size']}`")
  with open(paths[0][:-len(".json")] + ".md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
