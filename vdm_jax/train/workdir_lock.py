"""One writer per work directory: an advisory lock that names its holder.

`WorkdirLock(workdir)` takes an exclusive `flock` on `<workdir>/.vdm_jax.lock` and writes the
holder's host, process id, start time and command line into it. A second run on the same
directory (on this host, or on another host over a file system with working `flock`) refuses
with `WorkdirLockedError`, naming the first. The lock belongs to the open file, so a run that
dies (even by SIGKILL) releases it: the next run takes it over and reads the stale holder's
record only for its log line. In a multi-process run only process 0 locks; object-store
paths (`gs://...`) cannot be locked and are left unlocked, with a log line.
"""
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

from absl import logging
import jax

from vdm_jax import errors

LOCK_FILE = ".vdm_jax.lock"


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another live run holds the work directory."""


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      rec = json.load(f)
    return (f"host {rec.get('host')}, process {rec.get('pid')}, since {rec.get('started')} "
            f"({rec.get('command')})")
  except (OSError, ValueError):
    return "a process whose record is unreadable"


class WorkdirLock:
  """Context manager (or acquire()/release()) for the exclusive lock of `workdir`."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self) -> "WorkdirLock":
    if "://" in self.workdir:
      logging.info("%s is not a local path: not locked against a second run.", self.workdir)
      return self
    if jax.process_index() != 0:
      return self
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      raise WorkdirLockedError(
          f"Another run is writing {self.workdir}: {_holder(self.path)}. Two runs on one work "
          "directory would overwrite each other's checkpoints. Wait for it or stop it, or use "
          "another --workdir.") from e
    previous = os.pread(fd, 4096, 0)
    if previous.strip():
      logging.info("Taking over the lock of %s from a run that ended: %s", self.workdir,
                   previous.decode("utf-8", "replace").strip())
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "command": " ".join(sys.argv)[:500]}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
