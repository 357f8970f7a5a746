"""One trainer per workdir: WORKDIR/.lock names the job that trains there.

Two trainers on one workdir would overwrite each other's config.json and checkpoints. `hold(workdir)` creates
the lock atomically (O_CREAT | O_EXCL) with the owner's host, pid, start time and job id, and removes it when the
block ends, also on an error. The lock belongs to the job: only process 0 takes it (the other processes of a
multi-host job train in the same workdir) and tells the others whether it got it.

A lock left by a process that is gone (same host, pid not running: a killed run) is taken over with a one-line
notice. A lock of another host cannot be checked for liveness from here: it is refused, naming its owner and the
file to delete if that job is gone. gs:// (and other non-local) workdirs are not locked: their file systems have
no create-if-absent through etils.epath, so two writers could both believe they hold it.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
import sys
from typing import Iterator

import jax
import numpy as np

from translocator_jax import errors

LOCK_FILE = ".lock"
# Scheduler variables that name the job holding the lock (the first one set is recorded).
JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


class WorkdirLockedError(errors.UserError):
  """Another job trains in this workdir; the message names it (host, pid) and what to do."""


def _owner_record() -> dict:
  job = next((os.environ[v] for v in JOB_ID_VARS if os.environ.get(v)), None)
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "job": job}


def _describe(owner: dict) -> str:
  job = f", job {owner['job']}" if owner.get("job") else ""
  return f"pid {owner.get('pid')} on host {owner.get('host')} (started {owner.get('started')}{job})"


def _pid_running(pid: int) -> bool:
  if pid == os.getpid():
    return False  # our own pid in an old lock: a previous run of a restarted container, not us
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process
  return True


def _parse_owner(text: str) -> dict | None:
  """The lock's owner record, or None if the text is not one (empty: its trainer is writing it this instant)."""
  try:
    owner = json.loads(text)
  except ValueError:
    return None
  pid = owner.get("pid") if isinstance(owner, dict) else None
  return owner if isinstance(pid, int) and pid > 0 else None


def _create(lock: pathlib.Path, record: dict) -> bool:
  """Creates the lock holding `record`; False if it exists."""
  try:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(record, f)
  return True


def _take_over(lock: pathlib.Path, stale_text: str) -> None:
  """Removes a stale lock, unless another trainer replaced it meanwhile (then that one is left in place)."""
  aside = lock.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
  try:
    os.rename(lock, aside)  # atomic: of two trainers taking over at once, one moves the stale lock
  except FileNotFoundError:
    return
  if aside.read_text() == stale_text:
    aside.unlink()
    return
  with contextlib.suppress(FileExistsError):
    os.link(aside, lock)  # we moved a fresh lock of another trainer: put it back (never over a newer one)
  aside.unlink()


def acquire(workdir: str | os.PathLike) -> pathlib.Path:
  """Takes WORKDIR/.lock for this process; raises WorkdirLockedError while a live trainer holds it."""
  lock = pathlib.Path(os.path.abspath(os.fspath(workdir))) / LOCK_FILE
  here = socket.gethostname()
  for _ in range(5):  # each round either creates the lock, refuses, or clears a stale one
    record = _owner_record()
    if _create(lock, record):
      return lock
    try:
      text = lock.read_text()
    except FileNotFoundError:
      continue  # its owner just removed it
    owner = _parse_owner(text)
    if owner is None:
      raise WorkdirLockedError(
          f"workdir {lock.parent} has a lock file {lock} that is unreadable (a trainer starting this instant, or "
          "a damaged file); if no trainer uses this workdir, delete it and rerun")
    if owner.get("host") != here:
      raise WorkdirLockedError(
          f"workdir {lock.parent} is in use by {_describe(owner)}; its liveness cannot be checked from {here}: "
          f"if that job is gone, delete {lock} and rerun")
    if _pid_running(owner["pid"]):
      raise WorkdirLockedError(
          f"workdir {lock.parent} is in use by {_describe(owner)}: wait for it, stop it, or use another --workdir")
    print(f"NOTE: taking over the workdir lock {lock} of {_describe(owner)}, which is no longer running",
          file=sys.stderr, flush=True)
    _take_over(lock, text)
  raise WorkdirLockedError(f"could not take the workdir lock {lock}: it keeps changing hands")


def release(lock: pathlib.Path) -> None:
  """Removes the lock if it is still this process's (never one another trainer took over)."""
  with contextlib.suppress(FileNotFoundError):
    owner = _parse_owner(lock.read_text())
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
      lock.unlink()


def _is_local(workdir: str | os.PathLike) -> bool:
  return "://" not in os.fspath(workdir)


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[pathlib.Path | None]:
  """The workdir's lock for the duration of the block (None where it is not taken: see the module doc)."""
  lock, refusal = None, None
  if jax.process_index() == 0 and _is_local(workdir):
    try:
      lock = acquire(workdir)
    except WorkdirLockedError as e:
      refusal = e
  if jax.process_count() > 1 and _is_local(workdir):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
    if refused and refusal is None:
      refusal = WorkdirLockedError(f"workdir {os.fspath(workdir)} is in use by another job (see process 0's message)")
  if refusal is not None:
    raise refusal
  try:
    yield lock
  finally:
    if lock is not None:
      release(lock)
