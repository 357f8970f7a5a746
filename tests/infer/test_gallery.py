"""translocator-gallery and refined, leakage-aware evaluation on the session's tiny Earth-demo run."""
import csv
import json
import shutil

import numpy as np
import pytest

from translocator_jax.commands import evaluate as evaluate_cli, gallery as gallery_main
from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.eval import benchmark as eval_main, leakage
from translocator_jax.geo import distance, metrics, nearest
from translocator_jax.geo.metrics import ACC_KEYS
from translocator_jax.infer import gallery as gallery_lib
from translocator_jax.runtime import checkpoints


@pytest.fixture(scope="module")
def built(earth_tiny_run, tmp_path_factory):
  workdir, data_dir = earth_tiny_run
  root = tmp_path_factory.mktemp("gallery") / "g"
  gallery_main.main(["--workdir", str(workdir), "--data-dir", str(data_dir), "--out", str(root),
                     "--batch-size", "64", "--part-batches", "1", "--projection-steps", "50"])
  return workdir, data_dir, root


def test_gallery_holds_every_training_patch_of_this_checkpoint(built):
  workdir, data_dir, root = built
  g = gallery_lib.load(root)
  ckpt = checkpoints.load_for_inference(workdir)
  assert g.meta["step"] == ckpt.step
  assert g.meta["params_fingerprint"] == checkpoints.params_fingerprint(ckpt.params)
  config = ckpt.config
  config.data.data_dir = str(data_dir)
  train = leakage.training_locations(registry.dataset_info(config, "earth_patches"))
  assert len(g) == len(train) == g.meta["rows"]
  np.testing.assert_array_equal(g.index, np.arange(len(train)))
  np.testing.assert_array_equal(g.latlon, train)
  np.testing.assert_allclose(np.linalg.norm(g.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
  assert g.image_ids[0] == "train/000000" and len(set(g.image_ids)) == len(g)
  records = sources.open_source(registry.dataset_info(config, "earth_patches").tfds_dir, "train", decode=False)
  np.testing.assert_array_equal(g.fine_cell, [records[i][schema.CELLS][-1] for i in range(len(records))])
  assert len(g.meta["parts"]) == 4   # 240 patches, batches of 64, a part per batch
  assert set(g.meta["refine"]) >= {"top_cells", "temperature", "neighbours", "radius_km", "fine_weight", "features",
                                   "tuned_on"}
  assert g.meta["refine"]["tuned_on"] == "validation"
  saved = json.loads((root / "config.json").read_text())
  assert saved["eval"]["refine"] == "gallery" and saved["eval"]["gallery"]["top_cells"] == g.meta["refine"]["top_cells"]


def test_an_interrupted_build_resumes_to_the_same_rows(built, tmp_path):
  workdir, data_dir, root = built
  before = gallery_lib.load(root)
  copy = tmp_path / "g"
  shutil.copytree(root, copy)
  (copy / "meta.json").unlink()
  part = sorted((copy / "parts").glob("p*/part-000002.npz"))[0]
  part.unlink()                                      # as if killed while embedding the third batch
  gallery_lib.build(workdir, data_dir=str(data_dir), out_dir=copy, batch_size=64, part_batches=1, progress=False)
  after = gallery_lib.load(copy)
  np.testing.assert_array_equal(after.embeddings, before.embeddings)
  np.testing.assert_array_equal(after.image_ids, before.image_ids)
  assert part.exists()


def test_a_gallery_of_another_checkpoint_is_refused(built, capsys):
  workdir, data_dir, root = built
  older = sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))[0]
  with pytest.raises(gallery_lib.GalleryMismatchError, match="params_fingerprint|step"):
    eval_main.evaluate_checkpoint(older, datasets=["earth_patches"], data_dir=str(data_dir), refine_mode="gallery",
                                  gallery_dir=root, knn=False)
  # The command line says so in one line and exits 2.
  code = evaluate_cli.main(["--checkpoint", str(older), "--data-dir", str(data_dir), "--refine", "gallery",
                         "--gallery", str(root), "--no-knn", "--datasets", "earth_patches"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and "Traceback" not in "\n".join(err)
  assert "rebuild it with translocator-gallery" in err[-1]
  # Building into that gallery with the older checkpoint is refused too.
  with pytest.raises(gallery_lib.GalleryMismatchError):
    gallery_lib.build(older, data_dir=str(data_dir), out_dir=root, batch_size=64, progress=False)


def test_eval_json_has_refined_unseen_and_duplicate_keys(built, tmp_path, capsys):
  workdir, data_dir, root = built
  out = tmp_path / "preds"
  code = evaluate_cli.main(["--workdir", str(workdir), "--data-dir", str(data_dir), "--refine", "gallery",
                         "--gallery", str(root), "--no-knn", "--datasets", "earth_patches", "--json",
                         "--output-dir", str(out), "--unseen-km", "25", "--dup-sim", "0.95"])
  assert code == 0
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ["dataset", "method", "n", "median_km", "geoscore", "chance_acc_750km", "predictions_csv",
              "per_partition", "unseen_n", "near_duplicates", "refined_median_km", *ACC_KEYS,
              *[f"refined_{k}" for k in ACC_KEYS], *[f"unseen_{k}" for k in ACC_KEYS],
              *[f"unseen_refined_{k}" for k in ACC_KEYS], "coverage_radius50", "coverage_radius90"]:
    assert key in record, key
  # Each figure is the per-image CSV's own.
  rows = list(csv.DictReader(open(out / "earth_patches.csv")))
  true = np.array([[float(r["gt_lat"]), float(r["gt_lon"])] for r in rows], np.float32)
  refined = np.array([[float(r["pred_lat_refined"]), float(r["pred_lon_refined"])] for r in rows], np.float32)
  table = metrics.accuracy_table(refined, true)
  for k in ACC_KEYS:
    assert record[f"refined_{k}"] == pytest.approx(table[k])
  near_km = np.array([float(r["nearest_train_km"]) for r in rows])
  g = gallery_lib.load(root)
  np.testing.assert_allclose(near_km, nearest.nearest_km(true, g.latlon)[0], atol=1e-3)
  unseen = near_km > 25
  assert record["unseen_n"] == int(unseen.sum()) > 0
  fstar = np.array([[float(r["pred_lat"]), float(r["pred_lon"])] for r in rows], np.float32)
  assert record["unseen_acc_750km"] == pytest.approx(metrics.accuracy_table(fstar[unseen], true[unseen])["acc_750km"])
  sims = np.array([float(r["max_gallery_similarity"]) for r in rows])
  assert record["near_duplicates"] == int((sims > 0.95).sum())
  assert all(r["matched_image_id"].startswith("train/") for r in rows)
  # The coverage of the confidence radii is the CSV's own: the truth within radius_q of the f* answer.
  err = distance.haversine_km_numpy(fstar, true)
  for q in ("50", "90"):
    radius = np.array([float(r[f"radius{q}_km"]) for r in rows])
    assert record[f"coverage_radius{q}"] == pytest.approx(np.mean(err <= radius), abs=1.5 / len(rows))
  assert all(float(r["radius90_km"]) >= float(r["radius50_km"]) for r in rows)


def test_predictor_refines_as_evaluation_does(built, tmp_path):
  from translocator_jax.infer import predictor as predict
  workdir, data_dir, root = built
  result = eval_main.evaluate_checkpoint(workdir, datasets=["earth_patches"], data_dir=str(data_dir),
                                         refine_mode="gallery", gallery_dir=root, knn=False, output_dir=tmp_path)
  assert result.refine == "gallery"
  rows = list(csv.DictReader(open(tmp_path / "earth_patches.csv")))[:5]
  predictor = predict.Predictor.from_checkpoint(workdir, data_dir=str(data_dir), refine="gallery", gallery_dir=root)
  test = sources.open_source(registry.dataset_info(predictor.config, "earth_patches").tfds_dir, "test")
  examples = [test[i] for i in range(5)]
  preds = predictor.predict([e[schema.IMAGE] for e in examples], [e[schema.SEGMENTATION] for e in examples],
                            batch_size=4)
  for p, row in zip(preds, rows):
    assert p.refined is not None and p.refined.matched_image_id == row["matched_image_id"]
    np.testing.assert_allclose(p.refined.latlon, [float(row["pred_lat_refined"]), float(row["pred_lon_refined"])],
                               atol=1e-4)
    assert "refined:" in predict.format_prediction(p) and p.to_json()["refined"]["matched_image_id"]
  # Without refinement the Predictor answers as before, with no refined field.
  plain = predict.Predictor.from_checkpoint(workdir, data_dir=str(data_dir), refine="none")
  assert plain.predict([examples[0][schema.IMAGE]], [examples[0][schema.SEGMENTATION]])[0].refined is None


def _ceiling_script():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).parents[2] / "benchmarks" / "one_km_ceiling.py"
  spec = importlib.util.spec_from_file_location("one_km_ceiling", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_one_km_ceiling_on_a_hand_made_gallery_and_the_tiny_run(built, capsys):
  ceiling = _ceiling_script()
  # Within 25 km of the truth: a pair 0.3 km apart 5 km away, and three photos 0.2-0.4 km from the truth. The
  # three are the densest 1-km cluster, and their mean lies within 1 km of the truth; told only 2 km, the rule
  # still sees the three; told 0.1 km it sees nothing.
  truth = np.array([10.0, 5.0])
  gallery = np.array([[10.045, 5.0], [10.0477, 5.0], [10.002, 5.0], [9.998, 5.0], [10.0, 5.003]])
  assert ceiling.densest_cluster_hit(truth, gallery, 25.0)
  assert ceiling.densest_cluster_hit(truth, gallery, 2.0)
  assert not ceiling.densest_cluster_hit(truth, gallery, 0.1)
  assert not ceiling.densest_cluster_hit(truth, gallery[:2], 25.0)  # the pair's centre is 5 km off

  workdir, data_dir, root = built
  ceiling.main(["--workdir", str(workdir), "--gallery", str(root), "--data-dir", str(data_dir),
                "--regions-km", "25"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  config = checkpoints.load_for_inference(workdir).config
  config.data.data_dir = str(data_dir)
  records = sources.open_source(registry.dataset_info(config, "earth_patches").tfds_dir, "validation", decode=False)
  truth = np.stack([records[i][schema.LATLON] for i in range(len(records))]).astype(np.float64)
  g = gallery_lib.load(root)
  brute = np.array([distance.haversine_km_numpy(t[None], g.latlon.astype(np.float64)).min() for t in truth])
  assert out["split"] == "validation" and out["n"] == len(truth) and out["gallery"] == len(g.latlon)
  assert out["any_training_photo_within_1km"] == pytest.approx(np.mean(brute < 1.0))
  assert 0.0 <= out["densest_cluster_told_region_25km"] <= out["any_training_photo_within_1km"] <= 1.0


def test_unseen_places_are_measured_against_the_split_the_run_trained_on(built):
  import types
  workdir, data_dir, root = built
  config = checkpoints.load_for_inference(workdir).config
  config.data.data_dir = str(data_dir)
  info = registry.dataset_info(config, "earth_patches")
  refiner = types.SimpleNamespace(gallery=gallery_lib.load(root))  # a gallery of split 'train'
  np.testing.assert_array_equal(eval_main._training_latlon(info, "train", refiner), refiner.gallery.latlon)
  # A run trained on another split (config.data.train_split) is measured against that split's records, not the
  # gallery's.
  np.testing.assert_array_equal(eval_main._training_latlon(info, "validation", refiner),
                                leakage.training_locations(info, "validation"))
  assert len(leakage.training_locations(info, "validation")) != len(refiner.gallery.latlon)


def test_validation_queries_take_the_crops_evaluation_takes(built, monkeypatch):
  # Settings and radii are fitted on queries cropped as config.eval.tta says: with five crops the queries'
  # predictions are those of a five-crop forward over the validation split, not the centre crop's.
  from translocator_jax import models
  from translocator_jax.data.pipeline import inputs
  from translocator_jax.infer import inference, queries
  from translocator_jax.runtime import sharding
  workdir, data_dir, _ = built
  centre = queries.split_queries(workdir, data_dir=str(data_dir), batch_size=64)[0]
  load = checkpoints.load_for_inference

  def five_crop_run(*args, **kwargs):
    ckpt = load(*args, **kwargs)
    ckpt.config.eval.tta = "five_crop"
    return ckpt

  monkeypatch.setattr(checkpoints, "load_for_inference", five_crop_run)
  five, config, partitions, _, ckpt = queries.split_queries(workdir, data_dir=str(data_dir), batch_size=64)
  info = registry.dataset_info(config, "earth_patches")
  batches, _ = inputs.eval_batches(config, info, "validation", 64, "five_crop")
  direct = inference.predict_dataset(models.build_model(config.model), ckpt.params, batches,
                                     mesh=sharding.make_mesh(), partitions=partitions, heads=config.model.heads,
                                     palette=info.palette)
  np.testing.assert_allclose(five.pred_latlon, direct.pred_latlon, atol=1e-4)
  assert not np.allclose(five.extras["p_fine"], centre.extras["p_fine"])


def test_a_gallery_tuned_before_the_1_km_weight_keeps_the_rule_it_was_tuned_with(built, tmp_path):
  from translocator_jax.infer import refine
  workdir, data_dir, root = built
  old = tmp_path / "old_gallery"
  shutil.copytree(root, old)
  meta = json.loads((old / gallery_lib.META).read_text())
  tuned = meta["refine"]
  del meta["refine"]["fine_weight"]
  (old / gallery_lib.META).write_text(json.dumps(meta))
  ckpt = checkpoints.load_for_inference(workdir)
  config = ckpt.config
  config.data.data_dir = str(data_dir)
  partitions = registry.load_partitions(registry.dataset_info(config, "earth_patches"))
  refiner = refine.load_refiner(workdir, ckpt, partitions, refine_mode="gallery", gallery_dir=old)
  assert refiner.settings.fine_weight == 0.5  # the rule's weight before it was tuned
  assert refiner.settings.neighbours == tuned["neighbours"] and refiner.settings.features == tuned["features"]
  current = refine.load_refiner(workdir, ckpt, partitions, refine_mode="gallery", gallery_dir=root)
  assert current.settings.fine_weight == json.loads((root / gallery_lib.META).read_text())["refine"]["fine_weight"]
