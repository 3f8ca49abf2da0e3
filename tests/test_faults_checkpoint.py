"""Fault injection on checkpoints: flipped bytes, truncated, missing and mixed-up files, a full
disk and a SIGKILL during an asynchronous save, a second run on the same work directory, user
errors on the command line, values out of range. For each: nothing silently wrong, nothing good
lost, and a message that says what to do (README "Faults"). The same faults in a real training
run (fallback and exact resume, SIGTERM while compiling) are in test_train_loop.py."""
import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap
from unittest import mock

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vdm_jax import integrity
from vdm_jax.diffusion import guidance, samplers
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import state as state_lib
from vdm_jax.train import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ml_collections.ConfigDict({"model": {"width": 4}})


def _state(value: float):
  params = {"dense": {"kernel": jnp.full((64, 32), value) + jnp.arange(32.0),
                      "bias": jnp.full((32,), -value)}}
  return state_lib.create_train_state(params, optax.adam(1e-3))


def _target():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))


def _save_steps(directory, steps=(1, 2, 3), **kwargs):
  ck = ckpt_lib.Checkpointer(directory, keep_last=5, **kwargs)
  for s in steps:
    ck.save(s, _state(float(s)), None, CONFIG)
  ck.close()


def _restore_latest(directory, fallback=True, quarantine=True):
  ck = ckpt_lib.Checkpointer(directory, quarantine=quarantine)
  try:
    return ck.restore_latest(target_state=_target(), data_iter=None, config=CONFIG,
                             fallback=fallback)
  finally:
    ck.close()


def _largest_data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and os.sep + "d" + os.sep in f]
  return max(files, key=os.path.getsize)


def _flip(path, count=64):
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  for i in range(mid, min(mid + count, len(data))):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _assert_state_is(state, value):
  np.testing.assert_array_equal(np.asarray(state.params["dense"]["bias"]),
                                np.full((32,), -value, np.float32))
  np.testing.assert_array_equal(np.asarray(state.ema_params["dense"]["kernel"]),
                                np.asarray(_state(value).ema_params["dense"]["kernel"]))


# --- checksums ----------------------------------------------------------------------------------

def test_digests_are_exact_under_any_sharding_and_change_with_any_bit():
  x = jax.random.normal(jax.random.key(0), (16, 24))
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("a", "b")))
  row = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P(None, "b")))
  host = integrity.tree_digests({"x": np.asarray(x)})["x"]
  assert integrity.tree_digests({"x": sharded})["x"] == host
  assert integrity.tree_digests({"x": row})["x"] == host
  bits = np.asarray(x).view(np.uint32).copy()
  for index in [(0, 0), (7, 13), (15, 23)]:
    for bit in (0, 17, 31):
      flipped = bits.copy()
      flipped[index] ^= np.uint32(1 << bit)
      d = integrity.tree_digests({"x": flipped.view(np.float32)})["x"]
      assert d[0] != host[0], (index, bit)      # any changed word changes the plain sum
  swapped = np.asarray(x).copy()
  swapped[[2, 9]] = swapped[[9, 2]]          # same values, other places: the weighted sum sees it
  assert integrity.tree_digests({"x": swapped})["x"][1] != host[1]
  # Other dtypes: bf16, int, bool and PRNG keys are covered too.
  tree = {"h": jnp.ones((3, 5), jnp.bfloat16), "i": jnp.arange(7), "b": jnp.array([True, False]),
          "k": jax.random.key(3)}
  d = integrity.tree_digests(tree)
  assert set(d) == {"h", "i", "b", "k"}
  assert d["i"][:2] != integrity.tree_digests({"i": jnp.arange(7) + 1})["i"][:2]


# --- restore: fallback, refusal, naming ---------------------------------------------------------

def test_a_bit_flip_in_the_newest_checkpoint_falls_back_and_keeps_it_aside(tmp_path, caplog):
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  bad = _largest_data_file(os.path.join(directory, "3"))
  _flip(bad)
  state, step = _restore_latest(directory)
  assert step == 2
  _assert_state_is(state, 2.0)
  kept = glob.glob(os.path.join(directory, "corrupt-3-*"))
  assert len(kept) == 1, "the corrupt step is kept (renamed), never deleted"
  reason = open(os.path.join(kept[0], "REASON.txt")).read()
  assert os.path.relpath(bad, os.path.join(directory, "3")) in reason
  assert "corrupt" in caplog.text and "trying step 2" in caplog.text
  # The renamed step is no longer a checkpoint: a later save of step 3 works.
  ck = ckpt_lib.Checkpointer(directory)
  assert ck.all_steps() == [1, 2]
  assert ck.save(3, _state(3.5), None, CONFIG)
  ck.close()


def test_refusing_instead_of_falling_back_names_the_file_and_moves_nothing(tmp_path):
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  bad = _largest_data_file(os.path.join(directory, "3"))
  _flip(bad)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
    _restore_latest(directory, fallback=False)
  assert os.path.basename(bad) in str(e.value)
  assert "checkpoint_fallback=False" in str(e.value) and "[2, 1]" in str(e.value)
  assert sorted(os.listdir(directory)) == ["1", "2", "3"]


@pytest.mark.parametrize("fault,words", [("truncate", "truncated"), ("delete", "missing")])
def test_truncated_or_missing_files_are_named(tmp_path, fault, words):
  directory = str(tmp_path / "ck")
  _save_steps(directory, steps=(1, 2))
  step_dir = os.path.join(directory, "2")
  victim = _largest_data_file(step_dir)
  if fault == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  else:
    os.remove(victim)
  ck = ckpt_lib.Checkpointer(directory)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
    ck.restore(2, target_state=_target(), data_iter=None, config=CONFIG)
  ck.close()
  assert os.path.relpath(victim, step_dir) in str(e.value) and words in str(e.value)
  # A reader (sample / eval) falls back too, but leaves the bad step where it is.
  state, step = _restore_latest(directory, quarantine=False)
  assert step == 1 and sorted(os.listdir(directory)) == ["1", "2"]
  _assert_state_is(state, 1.0)


def test_arrays_that_do_not_match_their_digests_are_named(tmp_path):
  """Readable files with the wrong values (here: step 2's arrays replaced by step 1's, as a
  mixed-up copy would do, and no file manifest to catch it): the digests name the arrays."""
  directory = str(tmp_path / "ck")
  _save_steps(directory, steps=(1, 2))
  os.remove(os.path.join(directory, "2", integrity.FILE_MANIFEST))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(directory, "2", "state"))
  shutil.copytree(os.path.join(directory, "1", "state"), os.path.join(directory, "2", "state"))
  ck = ckpt_lib.Checkpointer(directory)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
    ck.restore(2, target_state=_target(), data_iter=None, config=CONFIG)
  ck.close()
  msg = str(e.value)
  assert "params/dense/bias" in msg and "ema_params/dense/kernel" in msg
  assert "its values do not match their checksum" in msg
  assert "\n  step " not in msg          # equal in both saves: not named


def test_no_good_checkpoint_refuses_and_deletes_nothing(tmp_path):
  directory = str(tmp_path / "ck")
  _save_steps(directory, steps=(1, 2))
  for s in ("1", "2"):
    _flip(_largest_data_file(os.path.join(directory, s)))
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match="No good checkpoint"):
    _restore_latest(directory)
  assert len(glob.glob(os.path.join(directory, "corrupt-*"))) == 2


def test_a_checkpoint_written_before_checksums_still_restores(tmp_path, caplog):
  directory = str(tmp_path / "ck")
  _save_steps(directory, steps=(1,))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(directory, "1", ckpt_lib.DIGESTS))
  os.remove(os.path.join(directory, "1", integrity.FILE_MANIFEST))
  state, step = _restore_latest(directory)
  assert step == 1
  _assert_state_is(state, 1.0)
  assert "without checksums" in caplog.text


def test_another_model_is_refused_not_set_aside(tmp_path):
  directory = str(tmp_path / "ck")
  _save_steps(directory, steps=(1,))
  other = ml_collections.ConfigDict({"model": {"width": 8}})
  ck = ckpt_lib.Checkpointer(directory, quarantine=True)
  with pytest.raises(ckpt_lib.CheckpointError, match="another model") as e:
    ck.restore_latest(target_state=_target(), data_iter=None, config=other)
  ck.close()
  assert not isinstance(e.value, ckpt_lib.CorruptCheckpointError)
  assert os.listdir(directory) == ["1"]


# --- saves that fail ----------------------------------------------------------------------------

def test_a_full_disk_during_an_async_save_stops_with_a_clear_error(tmp_path):
  directory = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(directory, keep_last=3)
  ck.save(1, _state(1.0), None, CONFIG)
  ck.wait()

  def no_space(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(self))

  with mock.patch.object(type(epath.Path(directory)), "write_text", no_space):
    with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
      ck.save(2, _state(2.0), None, CONFIG)
      ck.wait()
  msg = str(e.value)
  assert "No space left on device" in msg and "step 1" in msg and "intact" in msg
  assert "Free disk space" in msg
  ck.close()
  state, step = _restore_latest(directory)
  assert step == 1
  _assert_state_is(state, 1.0)


_KILLED_SAVE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from unittest import mock
    from etils import epath
    import test_faults_checkpoint as t
    from vdm_jax.train import checkpoint as ckpt_lib
    ck = ckpt_lib.Checkpointer({directory!r})
    ck.save(1, t._state(1.0), None, t.CONFIG)
    ck.wait()
    write = type(epath.Path("/")).write_text
    def slow(self, *a, **k):      # the async save hangs mid-way: the parent kills us here
      print("saving", flush=True)
      time.sleep(60)
      return write(self, *a, **k)
    with mock.patch.object(type(epath.Path("/")), "write_text", slow):
      ck.save(2, t._state(2.0), None, t.CONFIG)
      time.sleep(60)
""")


def test_sigkill_during_an_async_save_leaves_the_previous_step_good(tmp_path):
  directory = str(tmp_path / "ck")
  code = _KILLED_SAVE.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)),
                             directory=directory)
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert any(name.startswith("2") and name != "2" for name in os.listdir(directory)), (
      "the kill hit a half-written step 2")
  state, step = _restore_latest(directory)
  assert step == 1
  _assert_state_is(state, 1.0)
  ck = ckpt_lib.Checkpointer(directory)       # and the next save of step 2 goes through
  assert ck.save(2, _state(2.0), None, CONFIG)
  ck.close()
  assert _restore_latest(directory)[1] == 2


# --- one writer per work directory --------------------------------------------------------------

def test_a_second_run_on_the_same_workdir_is_refused_naming_the_first(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(workdir_lock.WorkdirLockedError) as e:
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert f"process {os.getpid()}" in str(e.value) and "another --workdir" in str(e.value)
  first.release()
  with workdir_lock.WorkdirLock(str(tmp_path)):    # free again once the first has ended
    pass


def test_a_dead_runs_lock_is_taken_over(tmp_path):
  code = ("import sys, os; sys.path.insert(0, %r)\n"
          "from vdm_jax.train import workdir_lock\n"
          "workdir_lock.WorkdirLock(%r).acquire(); os.kill(os.getpid(), 9)") % (ROOT,
                                                                                str(tmp_path))
  subprocess.run([sys.executable, "-c", code], check=False, env=dict(os.environ,
                                                                       JAX_PLATFORMS="cpu"))
  assert os.path.getsize(tmp_path / workdir_lock.LOCK_FILE) > 0   # its record stayed behind
  with workdir_lock.WorkdirLock(str(tmp_path)):
    pass


# --- the command line ---------------------------------------------------------------------------

def _cli(*args):
  return subprocess.run([sys.executable, "-m", "vdm_jax.main", "--config=configs/tiny.py",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_user_errors_on_the_command_line_are_one_message_without_traceback(tmp_path):
  bad = _cli("--mode=train", f"--workdir={tmp_path}/w", "--config.train.lr=-1",
             "--config.sample.dynamic_percentile=99.5")
  assert bad.returncode == 2
  assert "error: Invalid config" in bad.stderr and "Traceback" not in bad.stderr
  assert "train.lr=-1" in bad.stderr and "0.995" in bad.stderr
  missing = _cli("--mode=sample", f"--workdir={tmp_path}/none", "--prompt=a red circle")
  assert missing.returncode == 2 and "Traceback" not in missing.stderr
  assert "No checkpoints under" in missing.stderr and "train this stage first" in missing.stderr


# --- values out of range ------------------------------------------------------------------------

def test_a_percent_where_a_fraction_belongs_is_refused():
  x = jnp.linspace(-3, 3, 24).reshape(2, 12)
  with pytest.raises(ValueError, match="0.995"):
    guidance.dynamic_threshold(x, 99.5)
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    guidance.dynamic_threshold(x, 0.0)
  np.testing.assert_allclose(guidance.dynamic_threshold(x, 1.0), x / 3.0, rtol=1e-6)
  with pytest.raises(ValueError, match="0.995"):
    samplers.sample(model_fn=lambda z, l, c: z, shape=(1, 4), key=jax.random.key(0),
                    num_steps=2, schedule=lambda t: 10 - 20 * t, clip="dynamic",
                    dynamic_percentile=99.5)
  with pytest.raises(ValueError, match="finite"):
    samplers.sample(model_fn=lambda z, l, c: z, shape=(1, 4), key=jax.random.key(0),
                    num_steps=2, schedule=lambda t: 10 - 20 * t, guidance_weight=float("nan"),
                    uncond={})
