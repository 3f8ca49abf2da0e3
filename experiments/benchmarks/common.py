"""Shared pieces of the benchmark suite: the machine, timing, and what XLA says about a program.

    info = machine_info()                         # CPU, cores, jax, backend, device, load
    t = time_calls(run_once, warmup=1, repeats=5) # median / min / max / spread of wall times
    stats = compiled_stats(compiled)              # FLOPs, bytes accessed, memory analysis
    cost = training_log_cost(workdir)             # median s/step and TFLOP/step of a training

Timing follows DESIGN.md's performance method: warm-up calls first (compilation is done
before), every call ends in `jax.block_until_ready`, the median of several calls is the figure
and the spread (min, max, (max - min) / median) says how far to trust it. On CPU only ratios
between variants of one run mean anything.
"""
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Optional

import jax

from vdm_jax.train import flops as flops_lib


def training_log_cost(workdir: str) -> dict:
  """What a step of the training in `workdir` cost, from its metrics.jsonl: the median wall
  seconds per step ('train_s_per_step') and the median FLOPs per step XLA counted
  ('train_tflop_per_step'), the first two log windows (compilation, warm-up) left out. Empty
  when the log is missing or holds no more than those two windows."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    rows = [r for r in map(json.loads, f) if r.get("steps_per_sec")][2:]
  if not rows:
    return {}
  out = {"train_s_per_step": round(statistics.median(1 / r["steps_per_sec"] for r in rows), 4)}
  flops = [r["tflops_per_device"] / r["steps_per_sec"] for r in rows if r.get("tflops_per_device")]
  if flops:
    out["train_tflop_per_step"] = round(statistics.median(flops), 4)
  return out


def load_average() -> Optional[list]:
  """The 1, 5 and 15 minute load averages of the machine (None where the OS has none)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_memory_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
  """The accelerator memory XLA may use on `device` (bytes_limit), None on CPU / unknown."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    return None
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def machine_info() -> dict:
  """What a figure was measured on: host CPU, cores, OS, jax, backend and device, its memory
  and peak bf16 FLOP/s (None on CPU), and the load average now."""
  dev = jax.local_devices()[0]
  return dict(
      cpu=cpu_model(), cpu_cores=os.cpu_count(), platform=platform.platform(),
      python=platform.python_version(), jax=jax.__version__,
      jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib_version(),
      backend=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
      device_memory_bytes=device_memory_bytes(dev),
      peak_flops_per_device=flops_lib.peak_flops_per_device(dev),
      load_average=load_average())


def _jaxlib_version() -> Optional[str]:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def describe_machine(info: dict) -> str:
  """One line naming the machine for tables: 'AMD EPYC, 2 cores, cpu (cpu), jax 0.10.2'."""
  dev = f"{info['backend']} ({info['device_kind']})"
  if info["backend"] != "cpu":
    dev = f"{info['device_count']} x {info['device_kind']}"
    if info.get("device_memory_bytes"):
      dev += f" ({info['device_memory_bytes'] / 2**30:.0f} GiB usable)"
  return (f"{info['cpu']}, {info['cpu_cores']} cores, {dev}, jax {info['jax']}, "
          f"{info['platform']}")


def time_calls(run_once: Callable[[], Any], *, warmup: int, repeats: int) -> dict:
  """Times `run_once()` (which must return jax arrays) `repeats` times after `warmup` calls.

  Each call is followed by `jax.block_until_ready` inside the timed region. Returns seconds:
  median_s, min_s, max_s, spread ((max - min) / median) and all_s.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for _ in range(max(0, warmup)):
    jax.block_until_ready(run_once())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run_once())
    times.append(time.perf_counter() - start)
  return _summary(times, repeats=repeats, warmup=warmup)


@dataclasses.dataclass
class Prepared:
  """A compiled benchmark ready to time: `run_once()` makes one call (returns jax arrays);
  `finish(timing)` turns the timing of `time_calls` into the result row and frees buffers."""
  run_once: Callable[[], Any]
  finish: Callable[[dict], dict]


def time_interleaved(prepared: dict, *, warmup: int, repeats: int) -> dict:
  """Times several prepared benchmarks in rounds (one call of each per round, the starting
  one rotating), so that a change in the machine's load affects every variant alike; returns
  {name: timing} in the format of `time_calls`."""
  names = list(prepared)
  for name in names:
    for _ in range(max(0, warmup)):
      jax.block_until_ready(prepared[name].run_once())
  times = {name: [] for name in names}
  for r in range(repeats):
    for i in range(len(names)):
      name = names[(r + i) % len(names)]
      start = time.perf_counter()
      jax.block_until_ready(prepared[name].run_once())
      times[name].append(time.perf_counter() - start)
  return {name: dict(_summary(t, repeats=repeats, warmup=warmup), interleaved=True)
          for name, t in times.items()}


def _summary(times: list, *, repeats: int, warmup: int) -> dict:
  median = statistics.median(times)
  return dict(median_s=median, min_s=min(times), max_s=max(times),
              spread=(max(times) - min(times)) / median if median > 0 else 0.0,
              all_s=times, repeats=repeats, warmup=warmup, interleaved=False)


def compiled_stats(compiled, *, loop_trip_count: int = 1) -> dict:
  """XLA's view of a compiled executable (per device): FLOPs (cost analysis; a while loop's
  body scaled by `loop_trip_count`), bytes accessed, and the memory analysis.

  `peak_bytes` = temporaries + arguments + outputs, the figure compared with device memory
  (it over-counts donated buffers by `alias_bytes`, which are both argument and output).
  """
  out = dict(flops=flops_lib.compiled_flops(compiled, loop_trip_count=loop_trip_count))
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    accessed = (cost or {}).get("bytes accessed")
    out["bytes_accessed"] = float(accessed) * loop_trip_count if accessed else None
  except Exception:  # pylint: disable=broad-except
    out["bytes_accessed"] = None
  mem = compiled.memory_analysis()
  if mem is None:
    out.update(temp_bytes=None, argument_bytes=None, output_bytes=None, alias_bytes=None,
               peak_bytes=None)
    return out
  temp, arg = int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes)
  outb, alias = int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes)
  out.update(temp_bytes=temp, argument_bytes=arg, output_bytes=outb, alias_bytes=alias,
             peak_bytes=temp + arg + outb)
  return out


def lowered_flops(lowered, *, loop_trip_count: int = 1) -> Optional[float]:
  """XLA's FLOP count of a lowered (unoptimized, not yet partitioned) module, a while loop's
  body scaled by `loop_trip_count` as in `compiled_stats`; None if absent."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) * loop_trip_count if cost and cost.get("flops") else None


def timed_compile(lowerable: Callable[[], Any]) -> tuple[Any, float, float]:
  """(compiled, lower seconds, compile seconds) of `lowerable()` -> a jax `Lowered`."""
  start = time.perf_counter()
  lowered = lowerable()
  mid = time.perf_counter()
  compiled = lowered.compile()
  return compiled, mid - start, time.perf_counter() - mid


def error_text(exc: BaseException, limit: int = 300) -> str:
  """A one-line description of an exception for a results row."""
  first = (str(exc).strip().splitlines() or [""])[0]
  return f"{type(exc).__name__}: {first[:limit]}"


def is_out_of_memory(exc: BaseException) -> bool:
  """Whether an exception is XLA running out of device memory."""
  text = str(exc)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text
