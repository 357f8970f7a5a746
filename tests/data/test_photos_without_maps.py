"""photos_to_dataset --no-seg: a set without segmentation maps, marked so; RGB-only models (model.fusion='none')
train, evaluate and predict on it, and two-stream models are refused in one line naming the set."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dataset_fixtures as fx
from translocator_jax import errors, paths
from translocator_jax.commands import build as cli, evaluate as evaluate_cli
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema, sources
from translocator_jax.eval import benchmark as evaluation
from translocator_jax.infer import predictor as predict
from translocator_jax.runtime import config_io
from translocator_jax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
EARTH_TINY = "configs/earth_demo.py:tiny"
# Places inside every MP-16 partition, so the records get cells in all three.
TRAIN_PLACES = [(48.8566, 2.3522), (40.7128, -74.0060), (35.6762, 139.6503), (-33.8688, 151.2093)]
TEST_PLACES = [(51.5074, -0.1278), (41.9028, 12.4964), (34.0522, -118.2437)]


def _build(root, data_dir, name, split, places) -> pathlib.Path:
  """A --no-seg set `name` (one split) from JPEGs positioned by EXIF GPS (the first) or by a CSV (the others)."""
  photos = root / f"{name}_photos"
  files = {"gps.jpg": fx.exif_gps(fx.photo(40, 56, 0), *places[0])}
  files.update({f"listed_{i}.jpg": fx.jpeg(fx.photo(40 + 8 * i, 48, i)) for i in range(1, len(places))})
  fx.write_folder(photos, files)
  fx.write_csv(root / f"{name}.csv", [[f"listed_{i}.jpg", *places[i]] for i in range(1, len(places))],
               header=["path", "lat", "lon"])
  out = data_dir / name
  assert cli.photos_main(["--input", str(photos), "--csv", str(root / f"{name}.csv"), "--output", str(out),
                          "--no-seg", "--name", name, "--split", split, "--no-progress"]) == 0
  return photos


@pytest.fixture(scope="module")
def no_seg_sets(tmp_path_factory):
  """(data dir holding 'mapless' (split train) and 'mapless_test' (split test), folder of the test photos)."""
  root = tmp_path_factory.mktemp("no_seg")
  data_dir = root / "tfds"
  _build(root, data_dir, "mapless", "train", TRAIN_PLACES)
  test_photos = _build(root, data_dir, "mapless_test", "test", TEST_PLACES)
  return data_dir, test_photos


def _config(data_dir, fusion: str):
  """earth_demo.py:tiny on the photo set: ADE20K palette input, MP-16 partitions, two steps, no validation."""
  return config_io.apply_overrides(config_io.load_config(str(REPO / "configs" / "earth_demo.py") + ":tiny"), [
      f"model.fusion='{fusion}'", "model.seg_input='palette'", "model.num_seg_classes=150",
      "data.train='mapless'", f"data.data_dir='{data_dir}'", "data.val_split=None", "data.batch_size=2",
      "train.total_steps=2", "train.log_every=1", "train.ckpt_every=2", "train.eval_every=0", "train.tensorboard=False",
      "train.async_checkpoints=False", "eval.batch_size=4", "eval.datasets=('mapless_test',)"])


def test_the_set_is_written_without_maps_and_marked_so(no_seg_sets):
  data_dir, _ = no_seg_sets
  out = data_dir / "mapless"
  report = json.loads((out / "report.json").read_text())
  assert report["written"] == len(TRAIN_PLACES) and report["skipped"] == []
  assert json.loads((out / "metadata.json").read_text())[schema.MAPS_METADATA_KEY] is False
  assert not sources.has_segmentation_maps(out)
  raw = sources.open_source(out, "train", decode=False)
  assert [raw[i][schema.SEGMENTATION] for i in range(len(raw))] == [schema.NO_MAP] * len(TRAIN_PLACES)
  decoded = sources.open_source(out, "train")
  by_id = {decoded[i][schema.IMAGE_ID].decode(): decoded[i] for i in range(len(decoded))}
  gps = by_id["gps.jpg"]
  assert gps[schema.IMAGE].shape == (40, 56, 3)
  assert gps[schema.SEGMENTATION].shape == (40, 56, 1) and not gps[schema.SEGMENTATION].any()
  np.testing.assert_allclose(gps[schema.LATLON], TRAIN_PLACES[0], atol=1e-4)
  np.testing.assert_allclose(by_id["listed_3.jpg"][schema.LATLON], TRAIN_PLACES[3], atol=1e-4)
  assert all((ex[schema.CELLS] >= 0).all() for ex in by_id.values())
  info = registry.dataset_info(_config(data_dir, "none"), "mapless")
  assert not info.has_maps and info.num_seg_classes == 0


def test_no_seg_refuses_maps_given_with_it(tmp_path):
  fx.write_folder(tmp_path / "p", {"a.jpg": fx.exif_gps(fx.photo(8, 8, 1), 1.0, 2.0)})
  with pytest.raises(errors.BuildError, match="--no-seg builds a set without maps"):
    cli.photos_main(["--input", str(tmp_path / "p"), "--seg", str(tmp_path / "p"), "--no-seg",
                     "--output", str(tmp_path / "o"), "--no-cells", "--no-progress"])


def test_an_rgb_only_config_gets_batches_of_the_usual_shapes(no_seg_sets):
  data_dir, _ = no_seg_sets
  config = _config(data_dir, "none")
  info = registry.dataset_info(config, "mapless")
  batch = next(inputs.train_iterator(config, info, 2))
  assert batch["image"].shape == (2, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["seg"].shape == (2, 32, 32) and batch["seg"].dtype == np.uint8 and not batch["seg"].any()
  assert batch["cells"].shape == (2, 3) and (batch["cells"] >= 0).all()
  test_info = registry.dataset_info(config, "mapless_test")
  loader, n = inputs.eval_batches(config, test_info, "test", 4)
  (eval_batch,) = list(loader)
  assert n == len(TEST_PLACES) and eval_batch["mask"].tolist() == [True] * n + [False]
  assert eval_batch["image"].shape == (4, 32, 32, 3) and eval_batch["seg"].shape == (4, 32, 32)
  assert not eval_batch["seg"].any()


@pytest.mark.parametrize("fusion", ["cls_sum", "late_concat"])
def test_a_two_stream_model_is_refused_naming_the_set(no_seg_sets, fusion):
  data_dir, _ = no_seg_sets
  config = _config(data_dir, fusion)
  with pytest.raises(registry.MapsMissingError, match="dataset 'mapless' .* has no segmentation maps") as e:
    registry.dataset_info(config, "mapless")
  assert "model.fusion='none'" in str(e.value) and "--segmenter" in str(e.value)
  # Evaluation reads a training set's info without its records: the pipeline refuses there too.
  info = registry.dataset_info(config, "mapless", need_records=False)
  with pytest.raises(registry.MapsMissingError, match="'mapless'"):
    inputs.eval_batches(config, info, "train", 4)
  with pytest.raises(registry.MapsMissingError, match="'mapless'"):
    inputs.train_iterator(config, info, 2)


def test_the_trainer_refuses_a_two_stream_model_in_one_line(no_seg_sets, tmp_path):
  data_dir, _ = no_seg_sets
  env = dict(os.environ, TRANSLOCATOR_SHARED_DATA=str(paths.shared_data_dir()))
  out = subprocess.run(
      [sys.executable, "-m", "translocator_jax.commands.train", "--config", EARTH_TINY, "--workdir",
       str(tmp_path / "w"), "--set", "data.train='mapless'", "--set", f"data.data_dir='{data_dir}'", "--set",
       "model.seg_input='palette'", "--set", "model.num_seg_classes=150"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  lines = [l for l in out.stderr.splitlines() if l.strip() and "WARNING" not in l]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("translocator-train: error: dataset 'mapless'"), lines
  assert "no segmentation maps" in lines[0] and "model.fusion='none'" in lines[0]
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_an_rgb_only_model_trains_evaluates_and_predicts_on_it(no_seg_sets, tmp_path):
  data_dir, test_photos = no_seg_sets
  workdir = tmp_path / "w"
  summary = loop.train(_config(data_dir, "none"), workdir)
  assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
  assert (workdir / "checkpoints" / "2").is_dir()
  result = evaluation.evaluate_checkpoint(workdir, datasets=["mapless_test"], knn=False)
  assert result.missing == [] and [r["dataset"] for r in result.results] == ["mapless_test"]
  assert result.results[0]["n"] == len(TEST_PLACES)
  predictor = predict.Predictor.from_checkpoint(workdir)
  (p,) = predictor.predict([str(test_photos / "gps.jpg")], top_k=2)  # no map: the model reads none
  assert p.error is None and len(p.candidates) == 2
  np.testing.assert_allclose(p.true_latlon, TEST_PLACES[0], atol=1e-4)  # from the photo's EXIF


def test_a_set_without_maps_is_skipped_in_a_multi_dataset_evaluation(earth_tiny_run, no_seg_sets, tmp_path, capsys):
  # The two-stream tiny run evaluated on a mapless set and on its own test patches: the mapless one is named in one
  # line and skipped, the other is still evaluated, and the exit status says something was skipped.
  workdir, tiny_data = earth_tiny_run
  mapless_data, _ = no_seg_sets
  both = tmp_path / "tfds"
  both.mkdir()
  (both / "earth_patches").symlink_to(pathlib.Path(tiny_data) / "earth_patches")
  (both / "mapless_test").symlink_to(mapless_data / "mapless_test")
  code = evaluate_cli.main(["--workdir", str(workdir), "--datasets", "mapless_test,earth_patches", "--data-dir",
                            str(both), "--output-dir", str(tmp_path / "out"), "--no-knn", "--json"])
  out, err = capsys.readouterr()
  assert code == 2
  skipped = [line for line in err.splitlines() if "mapless_test" in line]
  assert len(skipped) == 1 and "has no segmentation maps" in skipped[0] and "Traceback" not in err
  records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [r["dataset"] for r in records] == ["earth_patches"]
  assert (tmp_path / "out" / "earth_patches.csv").exists() and not (tmp_path / "out" / "mapless_test.csv").exists()
