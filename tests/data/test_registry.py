"""The dataset registry: where a dataset is looked up, and what it says when it is not there."""
import json

import pytest

from translocator_jax.data import registry


def _built(root, name, version="1.0.0"):
  d = root / name / version
  d.mkdir(parents=True)
  (d / "dataset_info.json").write_text(json.dumps({"name": name}))
  return d


def test_data_dir_then_tfds_data_dir_then_home(tmp_path, monkeypatch):
  config_dir, env_dir, home = tmp_path / "config", tmp_path / "env", tmp_path / "home"
  in_config, in_env = _built(config_dir, "im2gps3k"), _built(env_dir, "im2gps3k")
  in_home = _built(home / "tensorflow_datasets", "im2gps3k")
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.setenv("TFDS_DATA_DIR", str(env_dir))
  assert registry.find_tfds_dir(config_dir, "im2gps3k") == in_config
  assert registry.find_tfds_dir(None, "im2gps3k") == in_env
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert registry.find_tfds_dir(None, "im2gps3k") == in_home


def test_the_newest_version_wins_and_a_missing_dataset_names_its_build_command(tmp_path):
  _built(tmp_path, "yfcc26k", "1.0.0")
  newest = _built(tmp_path, "yfcc26k", "1.1.0")
  assert registry.find_tfds_dir(tmp_path, "yfcc26k") == newest
  with pytest.raises(registry.DatasetMissingError,
                     match=r"'im2gps' not found under .*data_prep.build_benchmark --name im2gps .*--output "):
    registry.find_tfds_dir(tmp_path, "im2gps")


def test_paper_rows_are_accuracy_tables():
  assert registry.paper_table("im2gps3k") == pytest.approx(
      {"acc_1km": 0.118, "acc_25km": 0.311, "acc_200km": 0.467, "acc_750km": 0.589, "acc_2500km": 0.801})
  assert registry.paper_table("earth_patches") is None
