"""Preemption (train/preemption.py): SIGTERM between two periodic checkpoints saves the step in progress, exits with
status 143 and one line, and the rerun resumes from that step and ends bit-identical to an uninterrupted run."""
import os
import re
import signal
import subprocess
import threading
import time

from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import metrics_writer
from translocator_jax.runtime import workdir_lock
from translocator_jax.train import preemption

# The run of test_resume and test_faults: its program comes from the session's compilation cache.
OVERRIDES = ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False")
CKPT_EVERY = 4
# Each step slowed (from outside the trainer, conftest's wrapper) so the signal sent after step 5 lands in step 6,
# with a step's margin before the periodic save at step 8.
STEP_DELAY_S = 1.0


def _fingerprints(workdir):
  return {r["step"]: r["params_fingerprint"] for r in metrics_writer.read_metrics(workdir)
          if "params_fingerprint" in r}


def _lines(text):
  return [l for l in text.splitlines() if l.strip()]


def test_sigterm_saves_the_step_in_progress_and_the_rerun_ends_bit_identical(run_train, train_tools, tmp_path):
  reference, _ = run_train(tmp_path / "uninterrupted", OVERRIDES)
  workdir = tmp_path / "w"
  stderr_path = tmp_path / "stderr.txt"
  summary_path = tmp_path / "summary.json"
  cmd = train_tools.cmd(workdir, overrides=OVERRIDES, summary=summary_path, step_delay_s=STEP_DELAY_S)
  with stderr_path.open("w") as stderr:
    proc = subprocess.Popen(cmd, env=train_tools.env(), cwd=train_tools.repo, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
  watchdog = threading.Timer(240, proc.kill)  # a run that never gets to step 5 fails the test, not the suite
  watchdog.start()
  try:
    stdout = []
    for line in proc.stdout:  # "step k/12 loss ..." once a step (log_every=1, no progress bar)
      stdout.append(line)
      if line.startswith("step 5/12 "):  # past the first periodic checkpoint (step 4)
        break
    assert proc.poll() is None, "".join(stdout)[-3000:] + stderr_path.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)  # a second one while it finishes the step: ignored, not fatal
    stdout.append(proc.communicate(timeout=30)[0])
    waited = time.monotonic() - signalled
  finally:
    watchdog.cancel()
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  stdout, stderr = "".join(stdout), stderr_path.read_text()
  assert proc.returncode == 143, stdout[-3000:] + stderr[-3000:]
  assert waited < 30
  errors = _lines(stderr)
  assert len(errors) == 1 and re.fullmatch(r"preempted at step \d+: checkpoint saved", errors[0]), errors
  n = int(errors[0].split()[3].rstrip(":"))
  assert 5 < n < 12 and n % CKPT_EVERY != 0, n  # between two periodic checkpoints
  # It finished the step it was in and stopped there: no step after it, no summary, no "done".
  assert [l.split(" loss")[0] for l in _lines(stdout)] == [f"step {k}/12" for k in range(1, n + 1)], stdout
  assert not summary_path.exists()
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  # Step n is saved (committed: orbax renames its tmp dir) beside the periodic one, and it loads.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [CKPT_EVERY, n]
  ckpt = checkpoints.load_for_inference(workdir / "checkpoints" / str(n))
  assert ckpt.step == n and ckpt.fingerprint == _fingerprints(workdir)[n]

  # The same command resumes from step n and ends as the uninterrupted run did, bit for bit.
  resumed, out = run_train(workdir, OVERRIDES)
  assert f"resumed from {workdir}/checkpoints/{n} (step {n})" in out, out[-3000:]
  assert resumed["resumed_from"] == n and resumed["checkpoints"] == [n, 8, 12]
  assert resumed["params_fingerprint"] == reference["params_fingerprint"]
  assert resumed["losses"] == reference["losses"][n:]
  ref_prints = _fingerprints(tmp_path / "uninterrupted")
  assert {s: fp for s, fp in _fingerprints(workdir).items() if s != n} == ref_prints


def test_stop_signals_only_set_a_flag_and_put_the_previous_handlers_back():
  previous = signal.getsignal(signal.SIGINT)
  with preemption.StopSignals() as stop:
    assert not stop.agreed(1)
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler only records it
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal is ignored: the first one decides the exit status
    time.sleep(0.01)
    assert stop.requested and stop.agreed(2)  # one process: its own flag, no collective
  assert signal.getsignal(signal.SIGINT) is previous
  assert stop.exit_status == 130 and preemption.TrainingPreempted(2, stop.signum, "DIR").exit_status == 130
  assert preemption.TrainingPreempted(7, signal.SIGTERM, "DIR").exit_status == 143
