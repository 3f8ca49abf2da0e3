"""What the user sees of training: throughput/MFU, the log line, TensorBoard and metrics.jsonl.

Only process 0 writes; on other processes the writers are no-ops.
"""
import json
import logging as py_logging
import os
import time
from typing import Mapping, Optional

import jax
import numpy as np


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO/DEBUG records that orbax emits (dozens per checkpoint); keeps warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Keeps the training log readable: orbax's per-save INFO lines are not shown."""
  logger = py_logging.getLogger("absl")  # absl.logging (and orbax through it) logs here
  if not any(isinstance(f, _LibraryInfoFilter) for f in logger.filters):
    logger.addFilter(_LibraryInfoFilter())


class Throughput:
  """Steps/s, examples/s, TFLOP/s per device and MFU between consecutive `update` calls."""

  def __init__(self, *, global_batch: int, flops_per_device_step: Optional[float],
               peak_flops_per_device: Optional[float]):
    self.global_batch = global_batch
    self.flops = flops_per_device_step
    self.peak = peak_flops_per_device
    self._last_time: Optional[float] = None
    self._last_step: Optional[int] = None

  def reset(self, step: int) -> None:
    """Starts a new window at `step` (after compiles, restores or sampling)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def update(self, step: int) -> dict:
    """Rates over the steps since the last call (empty on the first call)."""
    now = time.perf_counter()
    out = {}
    if self._last_time is not None and step > self._last_step and now > self._last_time:
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      out["steps_per_sec"] = steps_per_s
      out["examples_per_sec"] = steps_per_s * self.global_batch
      if self.flops:
        flops_per_s = self.flops * steps_per_s
        out["tflops_per_device"] = flops_per_s / 1e12
        if self.peak:
          out["mfu"] = flops_per_s / self.peak
    self._last_time, self._last_step = now, step
    return out


def window_means(rows: list[dict]) -> dict:
  """The scalars of a logging window (host metric rows of its steps, oldest first): means of
  the finite values; the counters and schedules (nonfinite_count, consecutive_nonfinite, lr,
  ema_decay) at the latest step. 'loss' is reported (NaN) even when no step had a finite one."""
  out = {}
  last = rows[-1]
  for k in last:
    if k in ("nonfinite_count", "consecutive_nonfinite", "lr", "ema_decay"):
      out[k] = last[k]
    elif k != "finite":
      vals = [r[k] for r in rows if k in r and np.isfinite(r[k])]
      if vals or k == "loss":  # loss is reported even when NaN; others only when present
        out[k] = float(np.mean(vals)) if vals else float("nan")
  return out


def format_log_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
  """'step 120/1000 | loss 0.1234 | 3.21 steps/s | 25.7 ex/s | 12.3 TFLOP/s/dev | MFU 41.2%'."""
  parts = [f"step {step}/{total}"]
  if "loss" in scalars:
    parts.append(f"loss {scalars['loss']:.4f}")
  if "steps_per_sec" in scalars:
    parts.append(f"{scalars['steps_per_sec']:.2f} steps/s")
    parts.append(f"{scalars['examples_per_sec']:.1f} ex/s")
  if "tflops_per_device" in scalars:
    parts.append(f"{scalars['tflops_per_device']:.3g} TFLOP/s/dev")
  if "mfu" in scalars:
    parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
  if scalars.get("nonfinite_count", 0):
    parts.append(f"skipped {int(scalars['nonfinite_count'])} non-finite")
  return " | ".join(parts)


class MetricsWriter:
  """Scalars to TensorBoard (tensorboardX) and `metrics.jsonl` in `workdir`, process 0 only."""

  def __init__(self, workdir: str, *, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSON line {"step": step, name: value, ...} and one TensorBoard scalar per name."""
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False
