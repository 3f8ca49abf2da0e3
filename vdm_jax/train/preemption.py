"""Preemption: SIGTERM sets a flag; every process agrees on it before the loop saves and exits."""
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionWatcher:
  """Installs handlers for `signals` that only set a flag (safe inside a signal handler).

  `should_stop()` returns True on every process once any process has been signalled; with
  several processes it is a tiny all-gather, so call it at the same steps on all of them.
  `close()` puts the previous handlers back.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    else:
      logging.warning("Not on the main thread: preemption signals are not watched.")

  def _handle(self, signum, frame):
    del frame
    self._flag = True
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)

  @property
  def signalled(self) -> bool:
    """Whether this process received a signal."""
    return self._flag

  def should_stop(self) -> bool:
    """Whether any process received a signal (collective when several processes run)."""
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.array([int(self._flag)], np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
