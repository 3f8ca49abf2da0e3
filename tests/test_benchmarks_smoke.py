"""The benchmark suite (experiments/benchmarks) as a smoke test: it runs and writes its results.

No timing assertions: only that the suite runs end to end, writes JSON and markdown with the
expected fields, that the GPU plan traces and lowers (with tiny models, cuDNN falling back to
XLA on CPU), and that the pieces with exact answers (largest-batch search, FLOPs counting) give
them.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import cases
from experiments.benchmarks import flops_breakdown
from experiments.benchmarks import run_all
from experiments.benchmarks import sections
from experiments.benchmarks import train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
  """Runs `python -m experiments.benchmarks.run_all --size=smoke` in its own process (one CPU
  device; LLVM optimization off, which only shortens compiles: no timing is asserted)."""
  out = tmp_path_factory.mktemp("bench")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.benchmarks.run_all", "--size=smoke", f"--out={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out / "results_smoke.json", encoding="utf-8") as f:
    results = json.load(f)
  markdown = (out / "results_smoke.md").read_text(encoding="utf-8")
  return results, markdown, proc.stdout


def test_smoke_json_names_the_machine_and_load(smoke_results):
  results, _, _ = smoke_results
  m = results["machine"]
  for key in ("cpu", "cpu_cores", "jax", "backend", "device_kind", "load_average"):
    assert key in m, key
  assert m["backend"] == "cpu" and m["peak_flops_per_device"] is None
  assert len(m["load_average"]) == 3 and len(results["machine_end"]["load_average"]) == 3
  assert results["size"] == "smoke" and results["dry_run"] is None
  assert results["plan"]["train"] == list(cases.PLANS["smoke"].train)


def test_smoke_train_rows_have_throughput_flops_and_memory(smoke_results):
  results, _, _ = smoke_results
  (row,) = results["train"]
  assert "error" not in row, row.get("error")
  assert row["loss_finite"]
  for key in ("step_s", "examples_per_s", "frames_per_s", "tflops_per_device"):
    assert row[key] > 0, key
  assert row["mfu"] is None                       # CPU: no peak rate, MFU omitted
  assert row["frames_per_s"] == pytest.approx(row["examples_per_s"] * row["geometry"][0])
  assert row["flops"] > 0 and row["params"] > 0
  assert row["flops_unoptimized"] == pytest.approx(row["flops"], rel=0.5)
  assert row["peak_bytes"] == row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"]
  t = row["timing"]
  assert len(t["all_s"]) == t["repeats"] == cases.PLANS["smoke"].repeats
  assert t["min_s"] <= t["median_s"] <= t["max_s"]


def test_smoke_variants_sampling_and_breakdown(smoke_results):
  results, _, _ = smoke_results
  variants = {r["variant"]: r for r in results["variants"]}
  assert variants["baseline"]["step_s"] > 0
  assert "GPU" in variants["attention=cudnn"]["skipped"]
  assert "TPU" in variants["attention=splash"]["skipped"]
  by_mode = {r["mode"]: r for r in results["sampling"]}
  assert set(by_mode) == {"teacher", "student"}
  teacher, student = by_mode["teacher"], by_mode["student"]
  assert teacher["guided"] and not student["guided"]
  assert teacher["network_evaluations_per_video"] == 2 * teacher["num_steps"]
  assert student["network_evaluations_per_video"] == student["num_steps"]
  for r in (teacher, student):
    assert r["output_finite"] and r["videos_per_s"] > 0
    assert r["timing"]["interleaved"]     # the smoke/CPU plans time samplers in rounds
  b = results["breakdown"]
  assert b["total_flops"] == sum(b["by_class"].values()) == sum(b["by_block"].values())
  assert b["by_class"]["conv"] > 0 and b["by_class"]["attention"] > 0
  assert b["by_block"]["temporal_attn"] > 0 and b["by_block"]["outside_model"] > 0
  assert set(b["level_share"]) >= {"0", "1", "mid", "-"}
  assert sum(sum(r.values()) for r in b["level_share"].values()) == pytest.approx(1.0)
  none = b["per_remat"]["none"]
  assert none["residual_bytes_per_example"] > 0 and none["state_bytes"] > 0
  assert sum(none["residuals_batch2_by_dtype"].values()) == sum(
      none["residuals_batch2_by_producer"].values()) > 0
  assert none["xla_unoptimized_flops"] > 0


def test_smoke_markdown_has_every_table(smoke_results):
  _, markdown, stdout = smoke_results
  for heading in ("#### Train step", "#### Variants", "#### Sampling",
                  "#### FLOPs of the base train step"):
    assert heading in markdown, heading
  assert "Machine: " in markdown and "Load average" in markdown
  assert "| base_smoke | base |" in markdown
  assert markdown.strip() in stdout


def test_gpu_plan_lowers_on_cpu_with_tiny_models():
  """The GPU plan's train cases trace and lower (dry run): bf16, cuDNN replaced by XLA here."""
  plan = dataclasses.replace(cases.PLANS["gpu"], train_batches={})   # one batch: 3 programs
  ctx = sections.Context(plan=plan, execute=False, tiny_models=True,
                         devices=(jax.local_devices()[0],))
  rows = sections.train(ctx)
  assert [r["size"] for r in rows] == list(plan.train)
  for r in rows:
    assert "error" not in r, r.get("error")
    assert r["dtype"] == "bfloat16" and r["attention"] == "xla"
    assert "cudnn" in r["note"]
    assert r["flops_unoptimized"] > 0 and r["params"] > 0
  assert len(ctx.dry_cache) == 3       # base, ssr and tsr tiny models


class _FakeMemory(train_step.TrainStepBench):
  """largest_batch over a linear memory model (peak = fixed + per_example * batch)."""

  def __init__(self, fixed, per_example, oom_above=None):
    super().__init__(cases.stage_config("base_smoke"), devices=jax.local_devices()[:1])
    self.fixed, self.per_example, self.oom_above = fixed, per_example, oom_above
    self.asked = []

  def memory(self, batch_size):
    self.asked.append(batch_size)
    if self.oom_above is not None and batch_size > self.oom_above:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while compiling")
    return {"peak_bytes": self.fixed + self.per_example * batch_size}


@pytest.mark.parametrize("fixed,per_example,limit,expected", [
    (100.0, 10.0, 1000.0, 90),      # exact linear fit: found by the prediction
    (100.0, 10.0, 1005.0, 90),
    (100.0, 10.0, 125.0, 2),
    (100.0, 10.0, 115.0, 1),
    (100.0, 10.0, 105.0, None),     # even one example does not fit
])
def test_largest_batch_search_finds_the_boundary(fixed, per_example, limit, expected):
  bench = _FakeMemory(fixed, per_example)
  found = bench.largest_batch(limit_bytes=limit, max_batch=4096)
  assert found["batch_size"] == expected
  if expected is not None:
    assert found["resolved"]
    assert found["peak_bytes"] == fixed + per_example * expected
  assert found["compiles"] == len(set(bench.asked)) <= 10


def test_largest_batch_search_treats_compiler_oom_as_not_fitting():
  bench = _FakeMemory(0.0, 1.0, oom_above=37)
  found = bench.largest_batch(limit_bytes=1e9, max_batch=4096, max_compiles=20)
  assert found["batch_size"] == 37 and found["resolved"]
  assert any(p == float("inf") for _, p in found["probes"])


def test_flops_breakdown_counts_convs_matmuls_and_attention_exactly():
  def fn(x, w, kernel, q, k):
    with jax.named_scope("SpaceTimeUNet"):
      with jax.named_scope("down0_res0"):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
      with jax.named_scope("down0_0_spatial_attn"):
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k)       # batch dims: attention
        proj = x.reshape(-1, 4) @ w                        # no batch dims: dense
    return y, logits, jnp.exp(proj)
  x = jnp.ones((2, 6, 6, 4))
  w = jnp.ones((4, 5))
  kernel = jnp.ones((3, 3, 4, 7))
  q = jnp.ones((2, 10, 3, 8))
  k = jnp.ones((2, 12, 3, 8))
  table = flops_breakdown.breakdown(jax.make_jaxpr(fn)(x, w, kernel, q, k))
  assert table[("resblock", "conv")] == 2 * (2 * 6 * 6 * 7) * 4 * 9
  assert table[("spatial_attn", "attention")] == 2 * (2 * 3 * 10 * 12) * 8
  assert table[("spatial_attn", "dense")] == 2 * (72 * 5) * 4
  assert table[("outside_model", "elementwise")] == 72 * 5          # exp outside the scopes
  assert flops_breakdown.level_of("transpose(jvp(SpaceTimeUNet))/up2_1_temporal_attn/x") == "2"
  assert flops_breakdown.level_of("jvp(SpaceTimeUNet)/mid_res0/conv1") == "mid"
  assert flops_breakdown.level_of("jvp(SpaceTimeUNet)/cond/logsnr") == "-"
  summary = flops_breakdown.summarize(table)
  assert summary["total_flops"] == sum(table.values())
  assert np.isclose(sum(summary["class_share"].values()), 1.0)


def test_cli_rejects_unknown_sections_sizes_and_batches():
  for bad in (["--sections=train,nonsense"], ["--only-sizes=base_huge"],
              ["--train-batch=base_gpu_1b:zero"], ["--train-batch=nope:3"],
              ["--grad-accum=0"]):
    with pytest.raises(SystemExit):
      run_all.parse_args(bad)
  args = run_all.parse_args(["--size=gpu", "--sections=max_batch,train",
                             "--only-sizes=base_gpu_1b", "--train-batch=base_gpu_1b:6",
                             "--grad-accum=2"])
  assert args.sections == ("max_batch", "train") and args.only_sizes == ("base_gpu_1b",)
  assert args.train_batch == {"base_gpu_1b": 6} and args.grad_accum == 2
  json_path, _ = run_all.output_paths(args, "gpu")
  assert json_path.endswith("results_gpu_max_batch-train_base_gpu_1b_accum2.json")


def test_training_log_cost_is_the_median_after_the_warm_up_windows(tmp_path):
  """The first two log windows (compilation, warm-up) are left out; rows without a step rate
  (evaluations) are skipped; a missing or too short log gives nothing."""
  from experiments.benchmarks import common  # pylint: disable=g-import-not-at-top
  assert common.training_log_cost(str(tmp_path)) == {}
  rows = [{"step": 1, "steps_per_sec": 0.01, "tflops_per_device": 0.001},   # compiling
          {"step": 2, "steps_per_sec": 0.1, "tflops_per_device": 0.01},     # warming up
          {"step": 3, "eval_loss": 0.5},
          {"step": 4, "steps_per_sec": 2.0, "tflops_per_device": 0.2},
          {"step": 5, "steps_per_sec": 4.0, "tflops_per_device": 0.4},
          {"step": 6, "steps_per_sec": 1.0, "tflops_per_device": 0.1}]
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows[:3])
  assert common.training_log_cost(str(tmp_path)) == {}
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert common.training_log_cost(str(tmp_path)) == {"train_s_per_step": 0.5,
                                                     "train_tflop_per_step": 0.1}
