"""The shared step runner with a fake step on a one-number state (nothing is compiled):
metrics read one step late, the log / checkpoint / hook cadence, preemption (also before the
first step) and the non-finite streak."""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import runner as runner_lib


class State(NamedTuple):
  step: jax.Array


class Watcher:
  """A preemption watcher whose signal the fake step raises."""

  def __init__(self, signalled=False):
    self.signalled, self.closed = signalled, False

  def should_stop(self):
    return self.signalled

  def close(self):
    self.closed = True


class Checkpointer:
  directory = "/nowhere"

  def __init__(self, events):
    self.events, self.saved = events, []

  def wait(self):
    self.events.append("wait")

  def latest_step(self):
    return self.saved[-1] if self.saved else None


class Writer:

  def __init__(self, events):
    self.events, self.scalars = events, {}

  def write_scalars(self, step, scalars):
    self.events.append(f"log {step}")
    self.scalars[step] = dict(scalars)

  def close(self):
    self.events.append("close writer")


def _runner(events, losses, *, num_steps, watcher=None, signal_at=None, **kwargs):
  """A runner whose step n has loss losses[n - 1] (NaN counts as a skipped step) and raises
  the watcher's signal while step `signal_at` runs."""
  ckpt = Checkpointer(events)

  def step_fn(state, batch):
    n = int(state.step) + 1
    assert batch == {"index": n, "on_device": True}
    events.append(f"step {n}")
    if n == signal_at:
      watcher.signalled = True
    streak = 0
    while streak < n and math.isnan(losses[n - 1 - streak]):
      streak += 1
    return State(state.step + 1), {"loss": jnp.float32(losses[n - 1]),
                                   "consecutive_nonfinite": jnp.float32(streak)}

  def save(step, state):
    assert int(state.step) == step
    events.append(f"save {step}")
    ckpt.saved.append(step)
    return True

  cadence = runner_lib.Cadence(num_steps=num_steps, log_every=2, checkpoint_every=4,
                               max_consecutive_nonfinite=2)
  kwargs.setdefault("hooks", [runner_lib.Hook(
      every=3, fn=lambda step, state, host: events.append(
          f"hook {step} {int(state.step)} {host['index']}"))])
  return runner_lib.StepRunner(
      step_fn, cadence=cadence, checkpointer=ckpt, save=save, writer=Writer(events),
      throughput=metrics_lib.Throughput(global_batch=2, flops_per_device_step=None,
                                        peak_flops_per_device=None),
      put_batch=lambda host: dict(host, on_device=True), **kwargs)


def _batches(start):
  return ({"index": i} for i in range(start + 1, 100))


def test_metrics_lag_one_step_and_logs_checkpoints_and_hooks_keep_their_cadence():
  events = []
  runner = _runner(events, [1.0, 2.0, 3.0, 4.0, 5.0], num_steps=5)
  result = runner.run(State(jnp.int32(0)), _batches(0))
  assert events == [
      "step 1", "step 2", "step 3", "log 2",   # step 2's metrics are read after step 3 starts
      "hook 3 3 3",                              # metrics up to its step read first
      "step 4", "log 4", "save 4",
      "step 5", "log 5", "save 5",               # the last step: logged and saved
      "wait", "close writer"]
  logged = {s: row["loss"] for s, row in runner.writer.scalars.items()}
  assert logged == {2: 1.5, 4: 3.5, 5: 5.0}      # means over each logging window
  assert (result.step, result.preempted, int(result.state.step)) == (5, False, 5)
  assert result.last_scalars["loss"] == 5.0
  # A resumed run starts at its state's step.
  events.clear()
  result = _runner(events, [1.0] * 5, num_steps=5).run(State(jnp.int32(3)), _batches(3))
  assert events == ["step 4", "log 4", "save 4", "step 5", "log 5", "save 5", "wait",
                    "close writer"]


@pytest.mark.parametrize("signal_at,expected", [
    (2, ["step 1", "step 2", "save 2", "wait", "preempted 2", "wait"]),
    (4, ["step 1", "step 2", "step 3", "hook 3 3 3", "step 4", "save 4", "wait",
         "preempted 4", "wait"]),   # saved once at a checkpoint step
    (0, []),   # signalled during the setup: no step, no save, no on_preempted
])
def test_a_signal_saves_its_step_once_and_stops(signal_at, expected):
  events = []
  watcher = Watcher(signalled=signal_at == 0)
  runner = _runner(events, [1.0] * 6, num_steps=6, watcher=watcher, signal_at=signal_at,
                   on_preempted=lambda step: events.append(f"preempted {step}"))
  result = runner.run(State(jnp.int32(0)), _batches(0), watcher)
  assert [e for e in events if not e.startswith("log")] == expected + ["close writer"]
  assert result.preempted and result.step == signal_at == int(result.state.step)
  assert watcher.closed


def test_on_preempted_may_raise_and_the_writer_is_closed():
  events, watcher = [], Watcher()

  def stop(step):
    raise RuntimeError(f"stopped at {step}")

  runner = _runner(events, [1.0] * 6, num_steps=6, watcher=watcher, signal_at=1,
                   on_preempted=stop)
  with pytest.raises(RuntimeError, match="stopped at 1"):
    runner.run(State(jnp.int32(0)), _batches(0), watcher)
  assert events == ["step 1", "save 1", "wait", "close writer"] and watcher.closed


def test_a_nonfinite_streak_stops_with_nonfinite_error_when_its_metrics_are_read():
  events = []
  runner = _runner(events, [1.0, float("nan"), float("nan"), 1.0, 1.0], num_steps=5, hooks=[])
  with pytest.raises(runner_lib.NonFiniteError,
                     match=r"Stopping at step 3.*for 2 consecutive steps.*none \(no checkpoint"):
    runner.run(State(jnp.int32(0)), _batches(0))
  # step 3's metrics are read once step 4 is dispatched; the runner's state is step 4's
  assert events == ["step 1", "step 2", "step 3", "log 2", "step 4", "wait", "close writer"]
  assert runner.writer.scalars[2]["loss"] == 1.0   # the NaN of step 2 is left out of the mean
  assert int(runner.state.step) == 4
