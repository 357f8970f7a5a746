"""Resuming: SIGKILL at a random step and restart ends bit-identical; a corrupt latest checkpoint is skipped."""
import json
import os
import pathlib
import random
import signal
import subprocess
import time

from translocator_jax.train import checkpoints
from translocator_jax.train import metrics_writer

OVERRIDES = ("train.total_steps=20", "train.ckpt_every=4", "train.tensorboard=False")


def _fingerprints(workdir):
  return {r["step"]: r["params_fingerprint"] for r in metrics_writer.read_metrics(workdir)
          if "params_fingerprint" in r}


def test_sigkill_and_restart_is_bit_identical(run_train, train_tools, tmp_path):
  ref, _ = run_train(tmp_path / "ref", OVERRIDES)
  assert ref["checkpoints"] == [12, 16, 20]
  # Kill at a random step after the first save (step 4); steps are slowed so the kill lands mid-run.
  kill_after = random.Random().randint(5, 18)
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(train_tools.cmd(workdir, overrides=OVERRIDES + ("train.debug_step_delay_s=0.15",)),
                          env=train_tools.env(), cwd=train_tools.repo, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [r["step"] for r in metrics_writer.read_metrics(workdir) if "loss" in r]
    if steps and max(steps) >= kill_after:
      os.kill(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.02)
  assert proc.wait(timeout=60) == -signal.SIGKILL, f"the run ended before the kill at step {kill_after}"
  saved = _fingerprints(workdir)
  assert saved and max(saved) < 20, saved
  resumed, out = run_train(workdir, OVERRIDES)
  assert "resumed from" in out, out[-2000:]
  assert resumed["resumed_from"] >= 4
  assert resumed["params_fingerprint"] == ref["params_fingerprint"], f"killed after step {kill_after}"
  # Every checkpoint saved before and after the kill matches the uninterrupted run's at that step.
  ref_prints = _fingerprints(tmp_path / "ref")
  for step, fp in _fingerprints(workdir).items():
    assert fp == ref_prints[step], step


def test_corrupt_latest_checkpoint_falls_back_to_previous(run_train, tmp_path):
  workdir = tmp_path / "run"
  first, _ = run_train(workdir, ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False"))
  assert first["checkpoints"] == [4, 8, 12]
  # Corrupt every file of the latest state checkpoint (keep the names: a half-written, garbled save).
  state_dir = workdir / "checkpoints" / "12" / "state"
  files = [p for p in state_dir.rglob("*") if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * 7)
  second, out = run_train(workdir, ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False"))
  assert "WARNING: checkpoint" in out and "/checkpoints/12 could not be restored" in out, out[-3000:]
  assert "resumed from" in out and "(step 8)" in out, out[-3000:]
  assert second["resumed_from"] == 8
  # Steps 9..12 are redone from step 8 and give the same parameters as the first time.
  assert second["params_fingerprint"] == first["params_fingerprint"]
  assert (workdir / checkpoints.CORRUPT_DIR).is_dir()
  # The restored inference params match too, and the config travels with the checkpoint.
  config, params = checkpoints.restore_for_inference(workdir)
  assert checkpoints.params_fingerprint(params) == second["params_fingerprint"]
  assert config.model.width == 32 and json.loads((workdir / "config.json").read_text())["model"]["width"] == 32
  config2, params2 = checkpoints.restore_for_inference(workdir / "checkpoints" / "8")
  assert checkpoints.params_fingerprint(params2) != second["params_fingerprint"]
  assert config2.train.total_steps == 12
