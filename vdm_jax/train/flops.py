"""FLOPs of a compiled step (from XLA) and the peak dense bf16 FLOP/s of the chip, for MFU."""
from typing import Optional

from absl import logging
import jax

# Peak dense bf16 FLOP/s per chip, by datasheet. Matched against `device.device_kind` in order
# (first substring hit wins, lower-cased), so the more specific names come first.
PEAK_FLOPS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("v6 lite", 918e12),   # TPU v6e (Trillium)
    ("v6e", 918e12),
    ("v5 lite", 197e12),   # TPU v5e
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v5", 459e12),        # "TPU v5" is the v5p
    ("v4", 275e12),
)


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
  """The chip's peak dense bf16 FLOP/s, or None when unknown (CPU, other GPUs): MFU omitted."""
  device = device or jax.local_devices()[0]
  kind = device.device_kind.lower()
  if device.platform == "cpu":
    return None
  for key, peak in PEAK_FLOPS:
    if key in kind:
      return peak
  return None


def compiled_flops(compiled, *, loop_trip_count: int = 1) -> Optional[float]:
  """FLOPs per device of one call of a compiled (SPMD-partitioned) executable, from XLA's
  cost analysis; None when the backend reports none.

  XLA counts a while-loop body once, so for gradient accumulation (a scan of
  `loop_trip_count` microbatches) the count is scaled by the trip count; this over-counts only
  the optimizer update outside the loop, which is small next to forward + backward.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    logging.info("No cost analysis from XLA: %s", e)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops * loop_trip_count if flops > 0 else None
