"""One trainer per workdir: a live owner is refused by name, a dead one's lock is taken over, the lock goes away."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from translocator_jax.runtime import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[2]
_ACQUIRE = """
import sys
from translocator_jax.runtime import workdir_lock
try:
  workdir_lock.acquire(sys.argv[1])
except workdir_lock.WorkdirLockedError as e:
  print(e)
  sys.exit(3)
"""

@pytest.fixture
def live_pid():
  """The pid of a process that runs for the length of the test (another trainer, as far as the lock can tell)."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def _finished_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, pid, host=None):
  lock = workdir / workdir_lock.LOCK_FILE
  lock.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                              "started": "2026-01-02T03:04:05+00:00", "job": "4242"}))
  return lock


def test_a_workdir_in_use_is_refused_naming_host_and_pid(tmp_path, live_pid):
  lock = _write_lock(tmp_path, live_pid)
  before = lock.read_text()
  with pytest.raises(workdir_lock.WorkdirLockedError) as e:
    workdir_lock.acquire(tmp_path)
  message = str(e.value)
  assert "\n" not in message
  assert f"is in use by pid {live_pid} on host {socket.gethostname()}" in message and "job 4242" in message, message
  assert lock.read_text() == before  # the owner's lock is left alone


def test_a_lock_of_another_host_is_refused_saying_how_to_remove_it(tmp_path):
  lock = _write_lock(tmp_path, 12345, host="tpu-vm-7")
  with pytest.raises(workdir_lock.WorkdirLockedError) as e:
    workdir_lock.acquire(tmp_path)
  assert "pid 12345 on host tpu-vm-7" in str(e.value) and f"delete {lock}" in str(e.value), str(e.value)
  assert lock.exists()


@pytest.mark.parametrize("owner", ["finished process", "this pid"])
def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys, owner):
  # "this pid": a lock naming our own pid is a previous run's (a restarted container reuses pids), not ours.
  pid = _finished_pid() if owner == "finished process" else os.getpid()
  lock = _write_lock(tmp_path, pid)
  with workdir_lock.hold(tmp_path) as held:
    assert held == lock
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  notice = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(notice) == 1 and f"taking over the workdir lock {lock} of pid {pid}" in notice[0], notice
  assert not lock.exists()
  assert not list(tmp_path.glob(".lock*"))  # the stale one is gone too, not moved aside


def test_the_lock_is_removed_after_a_normal_and_a_failing_block(tmp_path):
  lock = tmp_path / workdir_lock.LOCK_FILE
  with workdir_lock.hold(tmp_path):
    owner = json.loads(lock.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["started"]
    # Held: another process of this host is refused, naming us.
    other = subprocess.run([sys.executable, "-c", _ACQUIRE, str(tmp_path)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert other.returncode == 3 and f"pid {os.getpid()} on host" in other.stdout, other.stdout + other.stderr
  assert not lock.exists()
  with pytest.raises(RuntimeError, match="boom"):
    with workdir_lock.hold(tmp_path):
      assert lock.exists()
      raise RuntimeError("boom")
  assert not lock.exists()


def test_a_cloud_workdir_is_not_locked():
  # No atomic create-if-absent there (see the module doc): nothing is taken, nothing is touched.
  with workdir_lock.hold("gs://some-bucket/run") as held:
    assert held is None
