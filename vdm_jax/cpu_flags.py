"""XLA flags for the CPU backend, chosen by measurement (experiments/benchmarks/README.md,
"Where the train step loses").

`apply()` puts DEFAULTS at the front of $XLA_FLAGS, before jax starts its backends, for every
default the user's own XLA_FLAGS do not already set; $VDM_JAX_CPU_FLAGS=off leaves XLA_FLAGS
alone. The CLI and the demo call it first thing. The flags name only the CPU backend, so a GPU
or TPU run reads and ignores them.

The defaults route convolutions and dots to XLA's own CPU emitters instead of the YNNPACK
library calls that jaxlib 0.10 makes by default: the U-Net's train step runs about 1.2x
faster that way on the 2-core x86-64 CPU this project is tested on (numbers in that README).
"""
import os

from absl import logging
from jax._src import xla_bridge   # importing jax starts no backend

OFF = ("off", "none", "0", "false")
# flag name -> value
DEFAULTS = {
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_dot,-individual_convolution",
}


def flags_to_add(xla_flags: str) -> list[str]:
  """The DEFAULTS that `xla_flags` (an XLA_FLAGS string) does not set, as '--name=value'."""
  given = {word.split("=", 1)[0] for word in xla_flags.split()}
  return [f"{name}={value}" for name, value in DEFAULTS.items() if name not in given]


def apply(environ=None) -> list[str]:
  """Adds the defaults to XLA_FLAGS in `environ` (default os.environ); returns what it added.

  XLA stops reading XLA_FLAGS at the first word that is not a --flag, so the defaults go first.
  Too late once jax has started its backends (XLA reads XLA_FLAGS then): this warns and
  changes nothing."""
  environ = os.environ if environ is None else environ
  if environ.get("VDM_JAX_CPU_FLAGS", "").strip().lower() in OFF:
    return []
  current = environ.get("XLA_FLAGS", "")
  added = flags_to_add(current)
  if not added:
    return []
  if environ is os.environ and _backends_started():
    logging.warning("vdm_jax.cpu_flags.apply: jax's backends already started; XLA_FLAGS "
                    "unchanged (%s not set).", " ".join(added))
    return []
  environ["XLA_FLAGS"] = " ".join(added + ([current] if current.strip() else []))
  return added


def _backends_started() -> bool:
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started()) if started is not None else False   # another jax: assume not
