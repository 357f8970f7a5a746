"""Faults said plainly by translocator-train (and -eval): a full disk while checkpointing, an unreadable newest
checkpoint and a workdir in use each give one line, not pages of tracebacks."""
import json
import socket
import subprocess
import sys

from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import metrics_writer
from translocator_jax.runtime import workdir_lock

# The run of test_resume and test_parallel: its program comes from the session's compilation cache.
OVERRIDES = ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False")

# translocator-train on a disk that fills up after the first checkpoint: from step 8 on, every write of a
# checkpoint file fails as the kernel says it (the arrays' own writes, in tensorstore's C++, are out of reach of
# this patch; the checkpoint's other files are written through Python's open).
_DISK_FULL_TRAIN = """
import builtins, errno, os, re, sys
from translocator_jax.commands import train as main
real_open = builtins.open
def full_open(file, mode="r", *args, **kwargs):
  path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
  step = re.search(r"/checkpoints/(\\d+)", path)
  if step and int(step.group(1)) >= 8 and set(mode) & set("wax+"):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
  return real_open(file, mode, *args, **kwargs)
builtins.open = full_open
sys.exit(main.main())
"""


def _lines(text):
  return [l for l in text.splitlines() if l.strip()]


def test_a_full_disk_stops_the_run_with_one_message_and_the_rerun_resumes(train_tools, run_train, tmp_path):
  workdir = tmp_path / "w"
  cmd = train_tools.cmd(workdir, overrides=OVERRIDES)
  assert cmd[1:3] == ["-m", "translocator_jax.commands.train"]
  cmd[1:3] = ["-c", _DISK_FULL_TRAIN]
  proc = subprocess.run(cmd, env=train_tools.env(), cwd=train_tools.repo, capture_output=True, text=True,
                        timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-3000:]
  assert "Traceback" not in out and "absl" not in out, out[-3000:]
  # Progress up to the failed save, then the one message: the step, its path, the cause, what is intact.
  assert [l.split(" loss")[0] for l in _lines(proc.stdout)] == [f"step {k}/12" for k in range(1, 9)]
  errors = _lines(proc.stderr)
  assert len(errors) == 1, errors
  ckpt_dir = workdir / "checkpoints"
  assert errors[0].startswith(f"translocator-train: error: could not write checkpoint step 8 to {ckpt_dir}/8: "
                              "No space left on device"), errors[0]
  assert f"the previous checkpoint, step 4 ({ckpt_dir}/4), is intact" in errors[0], errors[0]
  assert "rerunning the same command resumes from it" in errors[0]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released on the way out
  # The previous checkpoint is the one the run recorded, and it loads.
  recorded = {r["step"]: r["params_fingerprint"] for r in metrics_writer.read_metrics(workdir)
              if "params_fingerprint" in r}
  ckpt = checkpoints.load_for_inference(ckpt_dir / "4")
  assert ckpt.step == 4 and checkpoints.params_fingerprint(ckpt.params) == recorded[4] == ckpt.fingerprint
  # Once there is space again, the same command resumes from it.
  summary, out = run_train(workdir, OVERRIDES)
  assert summary["resumed_from"] == 4 and summary["checkpoints"] == [4, 8, 12], out[-3000:]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()


def _corrupt_arrays(step_dir):
  """Garbles the array chunks of a checkpoint and keeps its metadata: the restore fails deep in tensorstore's
  concurrent reads, the case that used to print hundreds of asyncio tracebacks."""
  chunks = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert chunks
  for p in chunks:
    p.write_bytes(b"\x00garbage" * 7)


def test_an_unreadable_newest_checkpoint_is_one_warning_line(run_train, train_tools, tmp_path):
  workdir = tmp_path / "w"
  first, _ = run_train(workdir, OVERRIDES)
  assert first["checkpoints"] == [4, 8, 12]
  _corrupt_arrays(workdir / "checkpoints" / "12")
  unreadable = f"WARNING: checkpoint {workdir}/checkpoints/12 could not be restored (ValueError: "

  # translocator-eval (restore for inference): one warning, then it goes on with step 8. The synthetic training
  # set has no partitions to predict with, so it stops there (in one line too).
  eval_cmd = [sys.executable, "-m", "translocator_jax.commands.evaluate", "--workdir", str(workdir)]
  proc = subprocess.run(eval_cmd, env=train_tools.env(), cwd=train_tools.repo, capture_output=True, text=True,
                        timeout=300)
  lines = _lines(proc.stdout + proc.stderr)
  assert len(lines) == 2 and lines[0].startswith(unreadable) and lines[0].endswith("trying the previous one"), lines
  assert lines[1] == "translocator-eval: error: the training set 'synthetic' has no partitions to predict with"
  # --verbose shows the details behind the line.
  verbose = subprocess.run(eval_cmd + ["--verbose"], env=train_tools.env(), cwd=train_tools.repo,
                           capture_output=True, text=True, timeout=300)
  assert "Traceback" in verbose.stderr and unreadable in verbose.stderr, verbose.stderr[-3000:]

  # translocator-train: one warning naming where the checkpoint went, and it resumes from step 8.
  summary, out = run_train(workdir, OVERRIDES)
  assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
  warnings = [l for l in _lines(out) if "WARNING" in l or "ERROR" in l]
  assert len(warnings) == 1 and warnings[0].startswith(unreadable), warnings
  assert f"moved it to {workdir / checkpoints.CORRUPT_DIR}/12." in warnings[0], warnings[0]
  assert summary["resumed_from"] == 8


def test_a_second_trainer_on_a_workdir_in_use_is_refused_in_one_line(train_tools, tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the trainer holding it
  try:
    lock = workdir / workdir_lock.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": owner.pid, "started": "2026-01-02T03:04:05",
                                "job": None}))
    proc = subprocess.run(train_tools.cmd(workdir, overrides=OVERRIDES), env=train_tools.env(),
                          cwd=train_tools.repo, capture_output=True, text=True, timeout=300)
  finally:
    owner.kill()
    owner.wait()
  lines = _lines(proc.stdout + proc.stderr)
  assert proc.returncode == 2 and len(lines) == 1, lines
  assert lines[0].startswith("translocator-train: error: workdir ") and \
      f"is in use by pid {owner.pid} on host {socket.gethostname()}" in lines[0], lines[0]
  assert sorted(p.name for p in workdir.iterdir()) == [workdir_lock.LOCK_FILE]  # nothing written over it
