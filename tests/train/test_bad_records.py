"""Damaged data during training and evaluation: a shard cut short is refused before the first step; records that
cannot be decoded are skipped, named and trained past, and too many of them stop the run with a checkpoint;
evaluation names the record and stops."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "data"))
import dataset_fixtures as fx  # pylint: disable=g-import-not-at-top,wrong-import-position  # tests/data's helpers
from translocator_jax.commands import demo
from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import manifest
from translocator_jax.data.records import sources
from translocator_jax.eval import benchmark as evaluation
from translocator_jax.runtime import config_io
from translocator_jax.train import bad_records
from translocator_jax.train import loop

TRAIN_BAD = (7, 100, 201)  # of the 240 training records
TEST_BAD = 5
# One epoch of the tiny set (240 records, batches of 16): every record is met once.
ONE_EPOCH = ("train.total_steps=15", "train.eval_every=0", "train.ckpt_every=0", "train.async_checkpoints=False")


@pytest.fixture(scope="module")
def bad_set(earth_tiny_data, tmp_path_factory):
  """A copy of the tiny Earth set whose train split holds TRAIN_BAD and test split TEST_BAD undecodable photos:
  (TFDS data dir, {split: [(shard file, position)]})."""
  root = tmp_path_factory.mktemp("bad_tfds")
  shutil.copytree(earth_tiny_data, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock"))
  d = earth_patches.dataset_dir(root, "tiny")
  where = {"train": fx.write_undecodable_records(d, "train", TRAIN_BAD),
           "test": fx.write_undecodable_records(d, "test", [TEST_BAD])}
  return root, where


def _config(data_dir, overrides=()):
  return config_io.apply_overrides(demo.load_config(quick=True, data_dir=str(data_dir)), list(overrides))


def test_training_skips_names_and_trains_past_undecodable_records(bad_set, tmp_path, monkeypatch, capfd):
  root, where = bad_set
  seen = []
  make_iterator = inputs.train_iterator

  def recording_iterator(*args, **kwargs):  # every batch the loop takes, as it took it
    it = make_iterator(*args, **kwargs)

    class Recording:
      def __iter__(self):
        return self

      def __next__(self):
        batch = next(it)
        seen.append({k: np.array(batch[k]) for k in ("index", "mask", "error")})
        return batch

      def get_state(self):
        return it.get_state()

      def set_state(self, state):
        it.set_state(state)

    return Recording()

  monkeypatch.setattr(inputs, "train_iterator", recording_iterator)
  summary = loop.train(_config(root, ONE_EPOCH), tmp_path / "w")
  assert summary["checkpoints"] == [15] and np.isfinite(summary["final_loss"])
  index = np.concatenate([b["index"] for b in seen])
  mask = np.concatenate([b["mask"] for b in seen])
  errors = np.concatenate([b["error"] for b in seen])
  assert sorted(index.tolist()) == list(range(240))  # one epoch: each record once
  assert sorted(index[~mask].tolist()) == list(TRAIN_BAD)  # skipped: exactly the undecodable ones
  assert (errors[mask] == "").all() and all(e.startswith("cannot be decoded: ") for e in errors[~mask])
  listed = json.loads((tmp_path / "w" / bad_records.FILE).read_text())
  assert sorted((e["file"], e["record"], e["index"]) for e in listed) == sorted(
      (f, r, i) for (f, r), i in zip(where["train"], TRAIN_BAD))
  assert all(e["error"].startswith("cannot be decoded: ") for e in listed)
  log = [line for line in capfd.readouterr().err.splitlines() if line.startswith("bad record skipped")]
  assert len(log) == len(TRAIN_BAD)
  for (f, r), i in zip(where["train"], TRAIN_BAD):
    assert sum(f"{f} record {r} (index {i}) cannot be decoded" in line for line in log) == 1, log


def test_too_many_bad_records_stop_the_run_with_a_checkpoint(bad_set, tmp_path):
  root, _ = bad_set
  config = _config(root, ONE_EPOCH + ("data.max_bad_records=2",))
  with pytest.raises(bad_records.TooManyBadRecords) as e:
    loop.train(config, tmp_path / "w")
  listed = json.loads((tmp_path / "w" / bad_records.FILE).read_text())
  assert len(listed) == 3
  step = max(r["step"] for r in listed)  # the third one tips it over: that step is saved, the run ends there
  text = str(e.value)
  assert "\n" not in text
  assert text.startswith(f"stopped at step {step}: 3 training records could not be read or decoded, more than "
                         f"data.max_bad_records=2; they are listed in {tmp_path / 'w' / bad_records.FILE}; "
                         f"checkpoint step {step} saved to {tmp_path / 'w' / 'checkpoints' / str(step)}"), text
  assert (tmp_path / "w" / "checkpoints" / str(step)).is_dir()
  # A limit large enough, and the same command resumes from there to the end, naming nothing twice.
  summary = loop.train(_config(root, ONE_EPOCH), tmp_path / "w")
  assert summary["resumed_from"] == step and summary["checkpoints"][-1] == 15
  assert json.loads((tmp_path / "w" / bad_records.FILE).read_text()) == listed


def test_evaluation_names_the_undecodable_record_and_stops(bad_set, tmp_path):
  root, where = bad_set
  workdir = tmp_path / "w"
  loop.train(_config(root, ("train.total_steps=1", "train.eval_every=0", "train.async_checkpoints=False")),
             workdir)
  with pytest.raises(sources.BadRecordError) as e:
    evaluation.evaluate_checkpoint(workdir, datasets=["earth_patches"], data_dir=str(root))
  ((file, record),) = where["test"]
  assert str(e.value).startswith(f"{file} record {record} (index {TEST_BAD} of split 'test') cannot be decoded: ")
  assert "\n" not in str(e.value)


def test_translocator_train_refuses_a_shard_cut_short_before_the_first_step(earth_tiny_data, train_tools,
                                                                            tmp_path):
  root = tmp_path / "tfds"
  shutil.copytree(earth_tiny_data, root, ignore=shutil.ignore_patterns("*.lock"))
  d = earth_patches.dataset_dir(root, "tiny")
  train = manifest.split_shards(d)["train"][0][0]
  os.truncate(train, train.stat().st_size - 4)
  workdir = tmp_path / "w"
  cmd = train_tools.cmd(workdir, config=f"{demo.CONFIG}:tiny", overrides=[f"data.data_dir={root}"])
  proc = subprocess.run(cmd, env=train_tools.env(), cwd=train_tools.repo, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr and "step 1/" not in proc.stdout
  errors = [line for line in proc.stderr.splitlines() if "translocator-train" in line]
  assert errors == [f"translocator-train: error: damaged shard {train}: {train.stat().st_size} bytes, the manifest "
                    f"says {train.stat().st_size + 4} (4 bytes short: cut off); rebuild the set: remove {d} and run "
                    f"python -m data_prep.build_earth_patches --output {earth_tiny_data} --config tiny"], proc.stderr
  assert not (workdir / "checkpoints").exists()
