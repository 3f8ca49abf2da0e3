"""Two processes x 2 CPU devices (gloo collectives over loopback) train exactly like one
process x 4 devices, join checkpoint saves and restores, and agree on preemption."""
import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path, tag, num_processes, process_id, port, local_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}")
  out = tmp_path / f"{tag}_{process_id}.json"
  log = open(tmp_path / f"{tag}_{process_id}.log", "w")
  proc = subprocess.Popen(
      [sys.executable, WORKER, str(out), str(num_processes), str(process_id), str(port),
       str(tmp_path / f"ckpt_{tag}")], env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, out, log


def _wait(procs, tmp_path, timeout=240):
  results = []
  for proc, out, log in procs:
    try:
      proc.wait(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
      log.close()
    if proc.returncode != 0:
      pytest.fail(f"worker exited {proc.returncode}:\n" + open(log.name).read()[-4000:])
    results.append(json.loads(out.read_text()))
  return results


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  procs = [_launch(tmp_path, "multi", 2, i, port, 2) for i in range(2)]
  procs.append(_launch(tmp_path, "single", 1, 0, 0, 4))
  multi0, multi1, single = _wait(procs, tmp_path)
  assert multi0["process_count"] == 2 and single["process_count"] == 1
  assert multi0["losses"] == pytest.approx(single["losses"], rel=1e-5)
  assert multi1["losses"] == multi0["losses"], "every process sees the same global loss"
  assert multi0["param_sum"] == pytest.approx(single["param_sum"], rel=1e-5)
  for r in (multi0, multi1, single):
    assert r["restored_param_sum"] == r["param_sum"]
  assert (multi0["next_element"], multi1["next_element"]) == (2, 3), \
      "each process restores its own iterator position"
  # only process 1 got SIGTERM, yet both decide to stop (and neither did before)
  assert multi0["preempt"] == [False, True, False]
  assert multi1["preempt"] == [False, True, True]
  assert single["preempt"] == [False, True, True]
