"""A persistent XLA compilation cache, so that a second run of the same config starts without
recompiling (the train step of a demo stage takes about a minute to compile on a CPU, a
paper-scale stage several minutes on a TPU host).

`enable()` points jax's persistent cache at a directory; programs that took at least
`min_compile_secs` to compile are written there (keyed by the program, the jax / XLA versions,
the devices and the XLA flags, so a stale entry is never used) and later compiles of the same
program read them back. The directory is chosen, in order, by the `directory` argument (the
CLI's --compile_cache), $VDM_JAX_COMPILE_CACHE, jax's own $JAX_COMPILATION_CACHE_DIR, else
$XDG_CACHE_HOME/vdm_jax/xla (~/.cache/vdm_jax/xla). "off" turns it off. Entries are written
atomically, so concurrent runs (pytest workers, several processes of one job) may share one
directory; deleting it is always safe.
"""
import os
from typing import Optional

from absl import logging
import jax

OFF = ("off", "none", "0", "false")


def default_directory() -> str:
  for var in ("VDM_JAX_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
    if os.environ.get(var):
      return os.environ[var]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "vdm_jax", "xla")


def enable(directory: Optional[str] = None, *, min_compile_secs: float = 0.5) -> Optional[str]:
  """Turns the persistent compilation cache on (before the first compile); returns its
  directory, or None when it is off."""
  directory = directory if directory else default_directory()
  if directory.strip().lower() in OFF:
    logging.info("Persistent compilation cache: off.")
    return None
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:   # a read-only home: run without the cache rather than fail
      logging.warning("Persistent compilation cache off: cannot create %s (%s).", directory, e)
      return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("Persistent compilation cache: %s", directory)
  return directory
