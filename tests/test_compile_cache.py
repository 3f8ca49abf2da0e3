"""The persistent compilation cache: enabled where the CLI and the demo start, a compiled
program lands in it and a second process reads it back instead of compiling."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAM = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp
    from jax._src import monitoring
    from vdm_jax import compile_cache
    events = []
    monitoring.register_event_listener(lambda name, **kw: events.append(name))
    print("dir", compile_cache.enable({cache!r}, min_compile_secs=0.0))
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * {salt})
    print("value", float(f(jnp.ones((8, 8)))))
    print("hit", any(e.endswith("cache_hits") for e in events))
""")


def _run(cache, salt=3):
  code = _PROGRAM.format(root=ROOT, cache=str(cache), salt=salt)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


def test_a_second_process_reads_the_compiled_program_back(tmp_path):
  cache = tmp_path / "xla"
  first = _run(cache)
  assert first["dir"] == str(cache) and first["hit"] == "False"
  written = set(os.listdir(cache))
  assert written, "the compiled programs were written"
  second = _run(cache)                      # read back: nothing new compiled or written
  assert second["hit"] == "True" and second["value"] == first["value"]
  assert set(os.listdir(cache)) == written
  other = _run(cache, salt=5)               # another program is compiled, not confused with it
  assert other["value"] != first["value"] and set(os.listdir(cache)) > written


def test_off_and_unwritable_directories_leave_the_cache_off(tmp_path):
  assert _run("off")["dir"] == "None"
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert _run(blocker / "sub")["dir"] == "None"     # cannot be created: run without it
