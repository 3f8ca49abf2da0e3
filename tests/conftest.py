"""Shared test setup: CPU only, 8 fake devices for the mesh tests (set before jax is imported)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
# The CLI and the demo enable a persistent compilation cache (~/.cache/vdm_jax/xla by default);
# tests that start them stay hermetic (tests of the cache pass their own directory).
os.environ.setdefault("VDM_JAX_COMPILE_CACHE", "off")
