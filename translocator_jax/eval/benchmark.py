"""Evaluating a checkpoint on the benchmarks: the paper's tables (each method, chance, kNN, the paper's row), the
unseen-place and near-duplicate subsets, per-image CSVs and maps; translocator-eval (commands/evaluate.py) is its
command line.

Each dataset's test split is predicted by f* and by each partition alone, beside chance and (Earth patches) a kNN
over colour thumbnails; translocator-eval's --help says it for a user.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Sequence

import jax
import ml_collections
import numpy as np

from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema, sources
from translocator_jax.eval import baselines, leakage
from translocator_jax.eval.leakage import DUP_SIM, UNSEEN_KM
from translocator_jax.geo import confidence, metrics, nearest, predictions as predictions_lib
from translocator_jax.geo.distance import haversine_km_numpy
from translocator_jax.geo.predictions import Predictions
from translocator_jax.infer import calibration, inference, maps, refine, session
from translocator_jax.runtime import checkpoints

PROG = "translocator-eval"  # the command its messages name (commands/evaluate.py)


def evaluate_dataset(config: ml_collections.ConfigDict, model, params, name: str, *, mesh, train_info,
                     partitions, tta: str, batch_size: int, knn: bool = True, refiner: refine.Refiner | None = None,
                     train_latlon: np.ndarray | None = None,
                     calib: calibration.Calibration | None = None) -> tuple[Predictions, dict]:
  """Predictions and result tables (each method, 'refined' with a refiner, 'chance', 'knn') of one dataset.

  With train_latlon, Predictions.extras gets nearest_train_km (each test image's distance to the nearest
  training location); with a refiner, max_gallery_similarity, matched_row and matched_similarity.
  """
  info = dataset_info(config, name, train_info)
  batches, n = inputs.eval_batches(config, info, registry.EVAL_SPLIT, batch_size, tta)
  preds = inference.predict_dataset(model, params, batches, mesh=mesh, partitions=partitions,
                                    heads=config.model.heads, desc=f"eval {name}",
                                    total=len(batches) if hasattr(batches, "__len__") else None,
                                    palette=info.palette,
                                    embedding_hook=refiner,
                                    confidence_radii=calib.head_radii(partitions) if calib else None)
  if len(preds.index) != n:
    raise RuntimeError(f"{name}: predicted {len(preds.index)} images of {n}")
  if train_latlon is not None:
    preds.extras["nearest_train_km"] = nearest.nearest_km(preds.true_latlon, train_latlon)[0]
  tables = inference.tables_from_predictions(preds)
  tables["chance"] = baselines.chance_table(partitions, preds.true_latlon)
  if knn and name == "earth_patches":
    tables["knn"] = baselines.knn_table(sources.open_source(info.tfds_dir, "train"),
                                        sources.open_source(info.tfds_dir, registry.EVAL_SPLIT),
                                        preds.index, preds.true_latlon)
  return preds, tables


def dataset_info(config, name: str, train_info: registry.DatasetInfo) -> registry.DatasetInfo:
  return train_info if name == train_info.name and train_info.tfds_dir else registry.dataset_info(config, name)


def dataset_map_paths(out_dir, name: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(error map, accuracy curve) files that `--maps out_dir` writes for dataset `name`."""
  out_dir = pathlib.Path(out_dir)
  return out_dir / f"{name}_errors.png", out_dir / f"{name}_accuracy_curve.png"


def draw_dataset_maps(out_dir, name: str, preds: Predictions, partitions) -> list[pathlib.Path]:
  """The error map (main method) and the accuracy-against-distance curves (every method and chance) of a dataset."""
  errors_png, curve_png = dataset_map_paths(out_dir, name)
  errors = maps.draw_errors(errors_png, preds.pred_latlon, preds.true_latlon,
                            title=f"{name}: true location -> prediction ({preds.method})")
  curves = {("TransLocator-JAX (f*)" if m == "fstar" else f"{m} partition only"):
            haversine_km_numpy(p, preds.true_latlon) for m, p in preds.methods().items()}
  chance = np.broadcast_to(baselines.most_common_cell_latlon(partitions), preds.true_latlon.shape)
  curves["chance (most common cell)"] = haversine_km_numpy(chance, preds.true_latlon)
  curve = maps.plot_accuracy_curve(curve_png, curves, title=name)
  return [errors, curve]


def image_ids(info: registry.DatasetInfo, split: str, index: np.ndarray) -> list[str]:
  if info.tfds_dir is None:
    return [str(i) for i in index]
  src = sources.open_source(info.tfds_dir, split, decode=False)
  ids = []
  for i in index:
    v = src[int(i)][schema.IMAGE_ID]
    ids.append(v.decode() if isinstance(v, bytes) else str(v))
  return ids


def write_predictions(path, info: registry.DatasetInfo, preds: Predictions, gallery=None) -> None:
  """The per-image CSV: the main method's coordinates, the predicted cell, every other method's, then the
  leakage values (nearest_train_km, max_gallery_similarity) and the matched training image when refined."""
  extra = {"pred_cell": preds.fine_class}
  extra.update({f"pred_lat_{m}": p[:, 0] for m, p in preds.others.items()})
  extra.update({f"pred_lon_{m}": p[:, 1] for m, p in preds.others.items()})
  for name in ("radius50_km", "radius90_km"):
    if name in preds.extras:
      extra[name] = [f"{v:.1f}" for v in np.asarray(preds.extras[name], np.float64)]
  for name in ("nearest_train_km", "max_gallery_similarity", "matched_similarity"):
    if name in preds.extras:
      extra[name] = [f"{v:.4f}" for v in np.asarray(preds.extras[name], np.float64)]
  if "matched_row" in preds.extras and gallery is not None:
    extra["matched_image_id"] = [gallery.image_ids[r] if r >= 0 else "" for r in preds.extras["matched_row"]]
  predictions_lib.write_predictions_csv(path, image_ids(info, registry.EVAL_SPLIT, preds.index), preds.true_latlon,
                                        preds.pred_latlon, extra_columns=extra)


def table_rows(name: str, tables: dict, leaks: dict | None = None) -> list:
  """The printed table's rows of one dataset: the model (and refined), each partition, the references, the
  paper, then the unseen-place subset and the table without near-duplicates."""
  main_method = next(iter(tables))
  rows = [(f"{name} / TransLocator-JAX ({main_method})", tables[main_method])]
  if "refined" in tables:
    rows.append((f"{name} / + gallery refinement", tables["refined"]))
  rows += [(f"{name} / {m} partition only", tables[m]) for m in schema.PARTITION_NAMES if m in tables]
  rows.append((f"{name} / chance (most common cell)", tables["chance"]))
  if "knn" in tables:
    rows.append((f"{name} / kNN raw 8x8 thumbnails", tables["knn"]))
  if registry.paper_table(name):
    rows.append((f"{name} / TransLocator (paper)", registry.paper_table(name)))
  leaks = leaks or {}
  if "unseen" in leaks:
    u = leaks["unseen"]
    for m in (main_method, "refined"):
      if m in u["tables"]:
        rows.append((f"{name} / unseen places (>{u['km']:g} km), {m}", u["tables"][m]))
  if "deduplicated" in leaks:
    d = leaks["deduplicated"]
    for m in (main_method, "refined"):
      if m in d["tables"]:
        rows.append((f"{name} / w/o {d['near_duplicates']} near-dups (sim>{d['similarity']:g}), {m}",
                     d["tables"][m]))
  return rows


def json_record(name: str, preds: Predictions, tables: dict, leaks: dict, csv_path) -> dict:
  """One dataset's JSON: the main table's keys, refined_* and unseen_* (when known), near_duplicates."""
  record = {"dataset": name, "method": preds.method, **tables[preds.method],
            "chance_acc_750km": tables["chance"]["acc_750km"], "predictions_csv": str(csv_path)}
  if "knn" in tables:
    record["knn_acc_750km"] = tables["knn"]["acc_750km"]
  if "refined" in tables:
    record.update({f"refined_{k}": v for k, v in tables["refined"].items() if k.startswith("acc_")})
    record["refined_median_km"] = tables["refined"]["median_km"]
  unseen = leaks.get("unseen")
  record["unseen_n"] = unseen["n"] if unseen else None
  for m, prefix in ((preds.method, "unseen_"), ("refined", "unseen_refined_")):
    if unseen and m in unseen["tables"]:
      t = unseen["tables"][m] or {}
      record.update({f"{prefix}{k}": t.get(k) for k in metrics.ACC_KEYS})
  record["near_duplicates"] = leaks["deduplicated"]["near_duplicates"] if "deduplicated" in leaks else None
  for q in ("50", "90"):
    radius = preds.extras.get(f"radius{q}_km")
    record[f"coverage_radius{q}"] = (None if radius is None
                                     else confidence.coverage(radius, preds.pred_latlon, preds.true_latlon))
  record["per_partition"] = {m: tables[m] for m in schema.PARTITION_NAMES if m in tables}
  return record


@dataclasses.dataclass
class Evaluation:
  """What evaluating one checkpoint gave: the printed table's rows, one JSON record per dataset, the datasets
  that are not built, and the test-time augmentation used."""
  rows: list
  results: list[dict]
  missing: list[str]
  tta: str
  refine: str = "none"


def evaluate_checkpoint(path, *, which: str = "latest", datasets: Sequence[str] | None = None,
                        data_dir: str | None = None, tta: str | None = None, batch_size: int | None = None,
                        output_dir=None, knn: bool = True, maps_dir=None, refine_mode: str | None = None,
                        gallery_dir=None, unseen_km: float = UNSEEN_KM, dup_sim: float = DUP_SIM) -> Evaluation:
  """Evaluates a workdir's (or one step directory's, or an open session.Session's) checkpoint on datasets (default:
  config.eval.datasets), writing per-image CSVs under output_dir (default: WORKDIR/predictions) and, with maps_dir,
  maps.

  refine_mode 'gallery' (default: config.eval.refine) adds the refined method from the checkpoint's gallery;
  the unseen-place subset (nearest training location > unseen_km) is reported whenever the training set's
  records are there, and near-duplicates (similarity > dup_sim) whenever a gallery is used.
  """
  run = session.open(path, which, data_dir=data_dir)
  config, params = run.config, run.params
  refine_mode = refine_mode or config.eval.refine
  datasets = list(datasets or config.eval.datasets)
  tta = tta or config.eval.tta
  mesh = run.mesh()
  batch_size = run.batch_size(batch_size)
  model = run.model(mesh)
  train_info, partitions = run.trained_on()
  out_dir = (checkpoints.as_path(output_dir) if output_dir
             else checkpoints.workdir_of(run.path) / "predictions")  # local or gs://
  refiner = refine.load_refiner(run.path, run, partitions, refine_mode=refine_mode, gallery_dir=gallery_dir,
                               mesh=mesh)
  train_latlon = _training_latlon(train_info, config.data.train_split, refiner)
  calib = calibration.load(run.path, run, partitions)
  rows, missing, results = [], [], []
  for name in (d.strip() for d in datasets):
    try:
      preds, tables = evaluate_dataset(config, model, params, name, mesh=mesh, train_info=train_info,
                                       partitions=partitions, tta=tta, batch_size=batch_size, knn=knn,
                                       refiner=refiner, train_latlon=train_latlon, calib=calib)
    except (registry.DatasetMissingError, registry.MapsMissingError) as e:  # the others are still evaluated
      missing.append(name)
      print(f"{PROG}: {e}", file=sys.stderr)
      continue
    csv_path = out_dir / f"{name}.csv"
    if jax.process_index() == 0:
      out_dir.mkdir(parents=True, exist_ok=True)
      write_predictions(csv_path, dataset_info(config, name, train_info), preds,
                        gallery=refiner.gallery if refiner else None)
      if maps_dir:
        draw_dataset_maps(maps_dir, name, preds, partitions)
    leaks = leakage.report(preds, unseen_km, dup_sim)
    results.append({**json_record(name, preds, tables, leaks, csv_path), "radius_calibrated": calib.calibrated})
    rows += table_rows(name, tables, leaks) + [("", None)]
  return Evaluation(rows[:-1], results, missing, tta, refine_mode)


def _training_latlon(train_info: registry.DatasetInfo, train_split: str,
                     refiner: refine.Refiner | None) -> np.ndarray | None:
  """Every location of the split the run trained on: the gallery's when it holds that split, else read from the
  records (None, with a note, when they are not there)."""
  if refiner is not None and refiner.gallery.meta.get("split") == train_split and \
      refiner.gallery.meta.get("dataset") == train_info.name:
    return refiner.gallery.latlon
  try:
    return leakage.training_locations(train_info, train_split)
  except (registry.DatasetMissingError, FileNotFoundError) as e:
    print(f"{PROG}: no unseen-place subset ({e})", file=sys.stderr)
    return None


def print_evaluation(path, evaluation: Evaluation, as_json: bool = False) -> None:
  if jax.process_index() != 0:
    return
  if as_json:
    for r in evaluation.results:
      print(json.dumps(r, default=float))
  elif evaluation.rows:
    print(f"{path}  (tta={evaluation.tta}, refine={evaluation.refine})")
    print(metrics.format_table(evaluation.rows))
    for r in evaluation.results:
      if r.get("coverage_radius50") is not None:
        how = "fitted on validation" if r.get("radius_calibrated") else "not calibrated"
        print(f"{r['dataset']}: the truth lies within radius50 for {r['coverage_radius50']:.1%} of photos (target "
              f"50%) and within radius90 for {r['coverage_radius90']:.1%} (target 90%); radii {how}")


def evaluate_predictions_file(path, skip_bad: bool = False) -> tuple[dict, Predictions]:
  preds = predictions_lib.read_predictions_csv(path, skip_bad=skip_bad)
  return metrics.accuracy_table(preds.pred_latlon, preds.true_latlon), preds
