"""The sections of the suite; each returns JSON-ready rows. `run_all.py` calls them in order.

  max_batch   largest trainable base-model batch per remat policy (accelerators; abstract
              compiles against device memory)
  train       throughput / TFLOP/s / MFU / compiled memory of base, SSR and TSR steps
  variants    remat none|block|full, bf16 vs fp32, attention implementations on one base size
  sampling    latency of 256-step guided teachers and 8/4-step distilled students per stage
  breakdown   FLOPs of the base train step by layer type and operation class (jaxpr; no
              compile), and the FLOPs that remat policies add

On a CPU plan (plan.interleave) the variants, and each stage's samplers, are timed in
interleaved rounds so that the shared machine's changing load falls on all of them alike.

`Context.execute` False is the dry run: every case is lowered (traced) only, or also compiled
abstractly with `compile_abstract`, and nothing runs, so the accelerator plan can be checked on
a CPU. Attention kernels that the backend lacks ('cudnn' off GPU, 'splash' off TPU) fall back to
'xla' in the main rows (recorded) and are skipped with the reason in the variant rows.
"""
import dataclasses
import sys
import time
from typing import Optional

import jax

from experiments.benchmarks import cases
from experiments.benchmarks import common
from experiments.benchmarks import flops_breakdown
from experiments.benchmarks import sampling as sampling_bench
from experiments.benchmarks import train_step
from vdm_jax.train import state as state_lib

ATTENTION_PLATFORM = {"xla": None, "cudnn": "gpu", "splash": "tpu"}
REMATS = ("none", "block", "full")


@dataclasses.dataclass
class Context:
  """Run-wide settings: the plan, whether to execute, devices, and the memory limit."""
  plan: cases.Plan
  execute: bool = True
  compile_abstract: bool = False
  devices: tuple = ()
  memory_limit_bytes: Optional[float] = None
  tiny_models: bool = False
  grad_accum: int = 1
  fill_batch: dict = dataclasses.field(default_factory=dict)
  dry_cache: dict = dataclasses.field(default_factory=dict)

  @property
  def backend(self) -> str:
    return jax.default_backend()


def log(msg: str) -> None:
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attention_available(impl: str) -> Optional[str]:
  """None when `impl` runs on this backend, else the reason it cannot."""
  need = ATTENTION_PLATFORM[impl]
  if need is None or jax.default_backend() == need:
    return None
  return f"'{impl}' attention needs a {need.upper()}; this backend is {jax.default_backend()}"


def _model_size(ctx: Context, size: str) -> str:
  """With tiny_models, every size is replaced by the smoke model of its kind (dry runs)."""
  return f"{cases.kind_of(size)}_smoke" if ctx.tiny_models else size


def _config(ctx, size, *, batch, dtype=None, attention=None, remat="none"):
  """(config, attention actually used, note) for one case."""
  attention = attention or ctx.plan.attention
  dtype = dtype or ctx.plan.dtype
  note = None
  if attention_available(attention) is not None:
    note = f"{attention_available(attention)}: used 'xla'"
    attention = "xla"
  if attention == "cudnn" and dtype == "float32":
    note, attention = "cuDNN attention takes bf16/fp16 only: used 'xla' for float32", "xla"
  cfg = cases.stage_config(_model_size(ctx, size), dtype=dtype, attention=attention,
                           remat=remat, text_length=ctx.plan.text_length, batch_size=batch,
                           grad_accum=ctx.grad_accum)
  return cfg, attention, note


def _train_case(ctx, size, *, batch, dtype=None, attention=None, remat="none",
                defer=False):
  """The row of one train-step case; with `defer`, (row, Prepared or None) untimed."""
  cfg, used_attention, note = _config(ctx, size, batch=batch, dtype=dtype, attention=attention,
                                      remat=remat)
  frames, height, width = cfg.frames, cfg.height, cfg.width
  row = dict(size=size, kind=cases.kind_of(size), model=_model_size(ctx, size),
             geometry=[frames, height, width], batch_size=batch, dtype=cfg.model.dtype,
             attention=used_attention, remat=remat, grad_accum=ctx.grad_accum, note=note)
  prepared = None
  try:
    bench = train_step.TrainStepBench(cfg, devices=ctx.devices)
    if ctx.execute:
      prepared = bench.prepare(batch_size=batch)
      if not defer:
        row.update(prepared.finish(common.time_calls(
            prepared.run_once, warmup=ctx.plan.warmup, repeats=ctx.plan.repeats)))
    else:
      key = (row["model"], batch, row["dtype"], used_attention, remat)
      if key not in ctx.dry_cache:   # tiny models make several sizes the same program
        ctx.dry_cache[key] = _dry_train(ctx, bench, batch)
      row.update(ctx.dry_cache[key])
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = common.error_text(e)
    log(f"  error: {row['error']}")
    prepared = None
  return (row, prepared) if defer else row


def _time_together(pending: list, *, warmup: int, repeats: int) -> None:
  """Times the prepared cases of `pending` [(row, Prepared or None)] in interleaved rounds
  and fills their rows."""
  ready = {i: p for i, (_, p) in enumerate(pending) if p is not None}
  if not ready:
    return
  try:
    timings = common.time_interleaved(ready, warmup=warmup, repeats=repeats)
  except Exception as e:  # pylint: disable=broad-except
    for i in ready:
      pending[i][0]["error"] = common.error_text(e)
    return
  for i, timing in timings.items():
    pending[i][0].update(ready[i].finish(timing))


def _dry_train(ctx, bench, batch):
  start = time.perf_counter()
  lowered = bench.lower(batch)
  out = dict(params=bench.param_count(), lower_s=time.perf_counter() - start,
             flops_unoptimized=common.lowered_flops(lowered, loop_trip_count=ctx.grad_accum))
  if ctx.compile_abstract:
    start = time.perf_counter()
    compiled = lowered.compile()
    out.update(common.compiled_stats(compiled, loop_trip_count=ctx.grad_accum),
               compile_s=time.perf_counter() - start)
  return out


def train(ctx: Context) -> list:
  rows = []
  for size in ctx.plan.train:
    batch = ctx.fill_batch.get(size, ctx.plan.batch_for(size))
    log(f"train {size} batch {batch}")
    rows.append(_train_case(ctx, size, batch=batch))
  return rows


def variants(ctx: Context, baseline: Optional[dict] = None) -> list:
  """Remat policies, the other dtype and the other attention kernels on plan.variant_size at
  plan.variant_batch (one batch that every variant fits, fp32 included).

  With plan.interleave (CPU) the baseline is compiled again and all variants are timed in
  interleaved rounds; otherwise `baseline` (the train row of that size at that batch, if
  measured) is reused and each variant is timed on its own."""
  p, size = ctx.plan, ctx.plan.variant_size
  batch = p.variant_batch or p.train_batch
  cases_ = [("baseline", {})] + [(f"remat={r}", dict(remat=r)) for r in p.variant_remats]
  if p.other_dtype:
    other = "float32" if p.dtype == "bfloat16" else "bfloat16"
    cases_.append((f"dtype={other}", dict(dtype=other)))
  together = p.interleave and ctx.execute and len(cases_) > 1
  if together or (baseline is not None and baseline.get("batch_size") != batch):
    baseline = None
  pending, skipped = [], []
  for name, kw in cases_:
    if name == "baseline" and baseline is not None:
      pending.append((dict(baseline), None))
      continue
    log(f"variant {name}")
    if together:
      pending.append(_train_case(ctx, size, batch=batch, defer=True, **kw))
    else:
      pending.append((_train_case(ctx, size, batch=batch, **kw), None))
  if together:
    log(f"timing {len(pending)} variants in interleaved rounds")
    _time_together(pending, warmup=p.warmup, repeats=p.repeats)
  rows = [dict(row, variant=name) for (name, _), (row, _) in zip(cases_, pending)]
  base_attention = rows[0].get("attention", p.attention)
  for impl in ATTENTION_PLATFORM:
    if impl == base_attention:
      continue
    reason = attention_available(impl)
    if reason is not None:
      skipped.append(dict(size=size, variant=f"attention={impl}", attention=impl,
                          skipped=reason))
      continue
    log(f"variant attention={impl}")
    rows.append(dict(_train_case(ctx, size, batch=batch, attention=impl),
                     variant=f"attention={impl}"))
  return rows + skipped


def sampling(ctx: Context) -> list:
  """Sampler latency per stage and step count; with plan.interleave (CPU) the step counts of
  one stage are timed in interleaved rounds (plan.sample_repeats rounds)."""
  rows = []
  p = ctx.plan
  for size in p.sampling:
    pending = []
    for num_steps, mode in p.sampling_steps:
      cfg, used_attention, note = _config(ctx, size, batch=p.sample_batch)
      row = dict(size=size, kind=cases.kind_of(size), model=_model_size(ctx, size),
                 mode=mode, num_steps=num_steps, batch_size=p.sample_batch,
                 dtype=cfg.model.dtype, attention=used_attention, note=note)
      log(f"sampling {size} {mode} {num_steps} steps")
      prepared = None
      try:
        bench = sampling_bench.SamplingBench(cfg, mode)
        if ctx.execute:
          prepared = bench.prepare(num_steps=num_steps, batch_size=p.sample_batch)
          if not p.interleave:
            repeats = p.sample_repeats if num_steps > 64 else p.repeats
            row.update(prepared.finish(common.time_calls(
                prepared.run_once, warmup=p.warmup, repeats=repeats)))
            prepared = None
        else:
          start = time.perf_counter()
          cond, uncond = bench.conditioning(p.sample_batch)
          jax.jit(bench.sample_fn(num_steps=num_steps, batch_size=p.sample_batch)
                  ).lower(bench.params(), jax.random.key(0), cond, uncond)
          row.update(lower_s=time.perf_counter() - start, guided=bench.guided,
                     network_evaluations_per_video=num_steps * (2 if bench.guided else 1))
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = common.error_text(e)
        log(f"  error: {row['error']}")
        prepared = None
      pending.append((row, prepared))
    if ctx.execute and p.interleave:
      log(f"timing {size}'s samplers in interleaved rounds")
      _time_together(pending, warmup=p.warmup, repeats=p.sample_repeats)
    rows += [row for row, _ in pending]
  return rows


def max_batch(ctx: Context) -> list:
  """Largest batch per (size, remat) by abstract compiles; sets ctx.fill_batch from remat none."""
  rows = []
  sizes = ctx.plan.max_batch_sizes
  for size in sizes:
    for remat in (ctx.plan.max_batch_remats if size == sizes[-1] else ("none",)):
      row = dict(size=size, remat=remat)
      if ctx.memory_limit_bytes is None:
        row["skipped"] = ("no device memory limit: CPU backend (give --memory-limit-gb to "
                          "search against a chosen limit)")
        rows.append(row)
        continue
      cfg, used_attention, note = _config(ctx, size, batch=1, remat=remat)
      row.update(attention=used_attention, dtype=cfg.model.dtype, note=note)
      log(f"max batch {size} remat={remat} (limit {ctx.memory_limit_bytes / 2**30:.1f} GiB)")
      try:
        bench = train_step.TrainStepBench(cfg, devices=ctx.devices)
        row.update(bench.largest_batch(limit_bytes=ctx.memory_limit_bytes),
                   params=bench.param_count())
        if remat == "none" and row.get("batch_size"):
          ctx.fill_batch[size] = int(row["batch_size"])
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = common.error_text(e)
        log(f"  error: {row['error']}")
      rows.append(row)
  return rows


# Device memory for the largest-batch prediction of the breakdown (an H100 80GB with jax's
# allocator allowed 90% of it: XLA_PYTHON_CLIENT_MEM_FRACTION=0.9; the default is 75%).
PREDICT_DEVICE_BYTES = 0.9 * 80e9


def breakdown(ctx: Context) -> dict:
  """Hardware-independent analysis of the base train step of plan.breakdown_size in bf16, by
  tracing only (nothing compiles): FLOPs by block and op class (remat none), and per remat
  policy the total FLOPs and the bytes the backward pass keeps (jax.vjp residuals) per example,
  with the largest batch they predict on an 80 GB GPU (an upper bound: transient buffers and
  workspace are not counted)."""
  size = ctx.plan.breakdown_size
  out = dict(size=size, batch_size=1, per_remat={})
  for remat in ctx.plan.breakdown_remats:
    log(f"breakdown {size} remat={remat}")
    cfg = cases.stage_config(size, dtype="bfloat16", attention="xla", remat=remat,
                             text_length=ctx.plan.text_length, batch_size=1)
    bench = train_step.TrainStepBench(cfg, devices=ctx.devices[:1])
    state, batch = bench.abstract_args(1)
    closed = jax.make_jaxpr(bench.pure_step())(state, batch)
    summary = flops_breakdown.summarize(flops_breakdown.breakdown(closed))
    # XLA's own count as a check of the jaxpr count (one lowering).
    xla_flops = common.lowered_flops(bench.lower(1)) if remat == "none" else None
    res1 = bench.saved_residual_bytes(1)
    res2, res2_dtype, res2_producer = bench.saved_residual_bytes(2, detail=True)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    grad_bytes = sum(x.size * 4 for x in jax.tree.leaves(state.params))
    per_example, fixed = res2 - res1, 2 * res1 - res2
    entry = dict(jaxpr_flops=summary["total_flops"],
                 xla_unoptimized_flops=xla_flops,
                 by_class=summary["by_class"], residual_bytes_per_example=per_example,
                 residual_bytes_fixed=fixed, residuals_batch2_by_dtype=res2_dtype,
                 residuals_batch2_by_producer=res2_producer, state_bytes=state_bytes,
                 grad_bytes=grad_bytes,
                 predicted_max_batch_80gb=int(
                     (PREDICT_DEVICE_BYTES - state_bytes - grad_bytes - fixed) // per_example)
                 if per_example > 0 else None)
    if remat == "none":
      levels = flops_breakdown.breakdown(closed, group=flops_breakdown.level_of)
      out["level_share"] = flops_breakdown.by_level(levels)
      out.update(summary, params=state_lib.param_count(state.params),
                 geometry=list(cases.geometry(size)), dtype=cfg.model.dtype)
    out["per_remat"][remat] = entry
  return out
