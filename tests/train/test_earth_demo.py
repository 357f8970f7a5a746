"""configs/earth_demo.py:tiny end to end on the real pipeline (grain, TFDS): train, kill, resume, evaluate."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from translocator_jax.geo import metrics
from translocator_jax.geo import predictions as predictions_lib
from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import metrics_writer

EARTH_TINY = "configs/earth_demo.py:tiny"


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference_run(run_train, tmp_path_factory, tfds_dir):
  """The uninterrupted tiny demo run (builds the tiny Earth-patches set on first use)."""
  workdir = tmp_path_factory.mktemp("earth_ref") / "w"
  summary, out = run_train(workdir, config=EARTH_TINY, extra_env={"TFDS_DATA_DIR": str(tfds_dir)})
  return workdir, summary, out


def _fingerprints(workdir):
  return {r["step"]: r["params_fingerprint"] for r in metrics_writer.read_metrics(workdir)
          if "params_fingerprint" in r}


def test_tiny_demo_trains_and_checkpoints(reference_run):
  workdir, summary, out = reference_run
  assert summary["checkpoints"] == [8, 16, 24]
  assert summary["losses"][-1] < summary["losses"][0]
  assert set(_fingerprints(workdir)) == {8, 16, 24}
  records = metrics_writer.read_metrics(workdir)
  assert {r["step"] for r in records if "val_acc_750km" in r} == {12, 24}
  assert checkpoints.best_step(workdir, summary["checkpoints"]) == 24  # the one save with a validation score
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
  config = json.loads((workdir / "config.json").read_text())
  assert all(int(n) > 0 for n in config["model"]["heads"].values())  # sizes resolved from the partitions


def test_sigkill_and_restart_is_bit_identical(reference_run, train_tools, tfds_dir, run_train, tmp_path):
  ref_dir, ref, _ = reference_run
  kill_after = random.Random().randint(9, 22)  # after the first save (step 8), before the end
  workdir = tmp_path / "killed"
  env = {**train_tools.env(), "TFDS_DATA_DIR": str(tfds_dir)}
  proc = subprocess.Popen(train_tools.cmd(workdir, config=EARTH_TINY, overrides=("train.log_every=1",),
                                         step_delay_s=0.2),
                          env=env, cwd=train_tools.repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [r["step"] for r in metrics_writer.read_metrics(workdir) if "loss" in r]
    # Past kill_after, and the first (async) save has been committed: orbax renames its tmp dir to '8'.
    if steps and max(steps) >= kill_after and (workdir / "checkpoints" / "8").is_dir():
      os.kill(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.02)
  assert proc.wait(timeout=60) == -signal.SIGKILL, f"the run ended before the kill at step {kill_after}"
  resumed, out = run_train(workdir, config=EARTH_TINY, extra_env={"TFDS_DATA_DIR": str(tfds_dir)})
  assert "resumed from" in out and resumed["resumed_from"] >= 8, out[-2000:]
  assert resumed["params_fingerprint"] == ref["params_fingerprint"], f"killed after step {kill_after}"
  ref_prints = _fingerprints(ref_dir)
  for step, fp in _fingerprints(workdir).items():
    assert fp == ref_prints[step], step


def test_eval_cli_json_and_predictions(reference_run, train_tools, tfds_dir, tmp_path):
  workdir, _, _ = reference_run
  env = {**train_tools.env(), "TFDS_DATA_DIR": str(tfds_dir)}
  proc = subprocess.run([sys.executable, "-m", "translocator_jax.commands.evaluate", "--workdir", str(workdir),
                         "--datasets", "earth_patches,im2gps", "--json", "--maps", str(tmp_path / "maps")],
                        env=env, cwd=train_tools.repo,
                        capture_output=True, text=True, timeout=300)
  # im2gps is not built here: a clear message naming the builder, exit status 2, earth_patches still evaluated.
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "im2gps" in proc.stderr and "data_prep.build_benchmark --name im2gps" in proc.stderr
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  r = lines[0]
  assert r["dataset"] == "earth_patches" and r["n"] == 60 and r["method"] == "fstar"
  for k in ("acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "median_km", "geoscore",
            "chance_acc_750km", "knn_acc_750km"):
    assert 0 <= r[k] and np.isfinite(r[k]), k
  # The per-image file reproduces the summary through the geo evaluator.
  rows = predictions_lib.read_predictions_csv(r["predictions_csv"])
  table = metrics.accuracy_table(rows.pred_latlon, rows.true_latlon)
  for k in ("acc_200km", "acc_750km", "acc_2500km", "median_km"):
    assert table[k] == pytest.approx(r[k], rel=1e-5), k
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name in ("earth_patches_errors.png", "earth_patches_accuracy_curve.png"):
    with Image.open(tmp_path / "maps" / name) as im:
      assert im.format == "PNG" and min(im.size) >= 300, name
      assert np.asarray(im.convert("L"), np.float32).std() > 10, name  # a drawing, not a blank canvas
  assert not list((tmp_path / "maps").glob("im2gps*"))


def test_tensorboard_reads_the_runs_logs(earth_tiny_run):
  # The README's `.venv/bin/tensorboard --logdir WORKDIR/tensorboard` reads these files (tensorboard comes with
  # the dev and tensorboard extras); its event reader sees the training curves.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir, _ = earth_tiny_run
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  tags = events.Tags()["scalars"]
  assert "train/loss" in tags and any(t.endswith("val_acc_750km") for t in tags), tags
  assert len(events.Scalars("train/loss")) >= 2
