"""`translocator-eval --workdir DIR | --checkpoint PATH [--datasets ...]`, and `translocator-eval predictions FILE.csv`.

For each dataset the model runs over the test split (centre crop of config.eval.crop_fraction, or five-crop TTA
averaging the softmaxes), predicts by the hierarchical f* rule over the three partitions and, for comparison, by
each partition alone, and prints the paper's table (accuracy within 1 / 25 / 200 / 750 / 2500 km, median km,
GeoScore) with the paper's TransLocator row beside the real benchmarks, plus two references: always predicting the
most common training cell ('chance') and, for earth_patches, a nearest-neighbour search over raw 8x8 colour
thumbnails of the training patches ('knn'). Per-image predictions go to DIR/predictions/<dataset>.csv.

`predictions FILE.csv [--json] [--skip-bad]` prints the table of a per-image predictions file (this project's
layout or GeoEstimation's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Sequence

import jax
import ml_collections
import numpy as np

from translocator_jax import models
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema, sources
from translocator_jax.eval import baselines, inference, maps
from translocator_jax.geo import metrics, predictions as predictions_lib
from translocator_jax.geo.distance import haversine_km_numpy
from translocator_jax.geo.predictions import Predictions
from translocator_jax.runtime import checkpoints, cli, sharding as sharding_lib

PROG = "translocator-eval"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training workdir (its newest readable checkpoint, or --which best)")
  src.add_argument("--checkpoint", help="one checkpoint step directory (WORKDIR/checkpoints/STEP)")
  p.add_argument("--which", default="latest", choices=("latest", "best"))
  p.add_argument("--datasets", default=None,
                 help=f"comma-separated, from {','.join(registry.EVAL_DATASETS)} (default: config.eval.datasets)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the benchmarks (default: config.data.data_dir)")
  p.add_argument("--tta", default=None, choices=("center", "five_crop"), help="default: config.eval.tta")
  p.add_argument("--batch-size", type=int, default=None, help="global eval batch (default: config.eval.batch_size)")
  p.add_argument("--output-dir", default=None, help="per-image CSVs go here (default: WORKDIR/predictions)")
  p.add_argument("--no-knn", action="store_true", help="skip the raw-thumbnail kNN baseline on earth_patches")
  p.add_argument("--maps", default=None, metavar="DIR",
                 help="draw DIR/<dataset>_errors.png (true -> predicted over the Blue Marble) and "
                      "DIR/<dataset>_accuracy_curve.png (share within d km against d, per method)")
  p.add_argument("--json", action="store_true", help="print one JSON object per dataset instead of the table")
  return p.parse_args(argv)


def evaluate_dataset(config: ml_collections.ConfigDict, model, params, name: str, *, mesh, train_info,
                     partitions, tta: str, batch_size: int, knn: bool = True) -> tuple[Predictions, dict]:
  """Predictions and result tables (each method, 'chance', 'knn') of one dataset."""
  info = dataset_info(config, name, train_info)
  batches, n = inputs.eval_batches(config, info, registry.EVAL_SPLIT, batch_size, tta)
  preds = inference.predict_dataset(model, params, batches, mesh=mesh, partitions=partitions,
                                    heads=config.model.heads, desc=f"eval {name}",
                                    total=len(batches) if hasattr(batches, "__len__") else None,
                                    fsdp=bool(config.train.get("fsdp", False)), palette=info.palette)
  if len(preds.index) != n:
    raise RuntimeError(f"{name}: predicted {len(preds.index)} images of {n}")
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


def write_predictions(path, info: registry.DatasetInfo, preds: Predictions) -> None:
  """The per-image CSV: the main method's coordinates, the predicted cell, then every other method's."""
  extra = {"pred_cell": preds.fine_class}
  extra.update({f"pred_lat_{m}": p[:, 0] for m, p in preds.others.items()})
  extra.update({f"pred_lon_{m}": p[:, 1] for m, p in preds.others.items()})
  predictions_lib.write_predictions_csv(path, image_ids(info, registry.EVAL_SPLIT, preds.index), preds.true_latlon,
                                        preds.pred_latlon, extra_columns=extra)


def table_rows(name: str, tables: dict) -> list:
  """The printed table's rows of one dataset: the model, each partition, the references, the paper."""
  main_method = next(iter(tables))
  rows = [(f"{name} / TransLocator-JAX ({main_method})", tables[main_method])]
  rows += [(f"{name} / {m} partition only", tables[m]) for m in schema.PARTITION_NAMES if m in tables]
  rows.append((f"{name} / chance (most common cell)", tables["chance"]))
  if "knn" in tables:
    rows.append((f"{name} / kNN raw 8x8 thumbnails", tables["knn"]))
  if registry.paper_table(name):
    rows.append((f"{name} / TransLocator (paper)", registry.paper_table(name)))
  return rows


@dataclasses.dataclass
class Evaluation:
  """What evaluating one checkpoint gave: the printed table's rows, one JSON record per dataset, the datasets
  that are not built, and the test-time augmentation used."""
  rows: list
  results: list[dict]
  missing: list[str]
  tta: str


def evaluate_checkpoint(path, *, which: str = "latest", datasets: Sequence[str] | None = None,
                        data_dir: str | None = None, tta: str | None = None, batch_size: int | None = None,
                        output_dir=None, knn: bool = True, maps_dir=None) -> Evaluation:
  """Evaluates a workdir's (or one step directory's) checkpoint on datasets (default: config.eval.datasets),
  writing per-image CSVs under output_dir (default: WORKDIR/predictions) and, with maps_dir, maps."""
  config, params = checkpoints.restore_for_inference(path, which=which)
  if data_dir:
    config.data.data_dir = data_dir
  datasets = list(datasets or config.eval.get("datasets", registry.EVAL_DATASETS))
  tta = tta or config.eval.get("tta", "center")
  mesh = sharding_lib.make_mesh()
  batch_size = int(batch_size or config.eval.get("batch_size", 256))
  batch_size = max(jax.device_count(), batch_size // jax.device_count() * jax.device_count())
  model = models.build_model(config.model)
  train_info = registry.dataset_info(config, config.data.train, need_records=False)  # its partitions
  partitions = registry.load_partitions(train_info)
  if partitions is None:
    raise cli.UserError(f"the training set {config.data.train!r} has no partitions to predict with")
  out_dir = (checkpoints.as_path(output_dir) if output_dir
             else checkpoints.workdir_of(path) / "predictions")  # local or gs://
  rows, missing, results = [], [], []
  for name in (d.strip() for d in datasets):
    try:
      preds, tables = evaluate_dataset(config, model, params, name, mesh=mesh, train_info=train_info,
                                       partitions=partitions, tta=tta, batch_size=batch_size, knn=knn)
    except registry.DatasetMissingError as e:
      missing.append(name)
      print(f"{PROG}: {e}", file=sys.stderr)
      continue
    csv_path = out_dir / f"{name}.csv"
    if jax.process_index() == 0:
      out_dir.mkdir(parents=True, exist_ok=True)
      write_predictions(csv_path, dataset_info(config, name, train_info), preds)
      if maps_dir:
        draw_dataset_maps(maps_dir, name, preds, partitions)
    record = {"dataset": name, "method": preds.method, **tables[preds.method],
              "chance_acc_750km": tables["chance"]["acc_750km"], "predictions_csv": str(csv_path)}
    if "knn" in tables:
      record["knn_acc_750km"] = tables["knn"]["acc_750km"]
    record["per_partition"] = {m: tables[m] for m in schema.PARTITION_NAMES if m in tables}
    results.append(record)
    rows += table_rows(name, tables) + [("", None)]
  return Evaluation(rows[:-1], results, missing, tta)


def print_evaluation(path, evaluation: Evaluation, as_json: bool = False) -> None:
  if jax.process_index() != 0:
    return
  if as_json:
    for r in evaluation.results:
      print(json.dumps(r, default=float))
  elif evaluation.rows:
    print(f"{path}  (tta={evaluation.tta})")
    print(metrics.format_table(evaluation.rows))


def _evaluate_main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  path = args.workdir or args.checkpoint
  datasets = args.datasets.split(",") if args.datasets else None
  evaluation = evaluate_checkpoint(path, which=args.which, datasets=datasets, data_dir=args.data_dir, tta=args.tta,
                                   batch_size=args.batch_size, output_dir=args.output_dir, knn=not args.no_knn, maps_dir=args.maps)
  print_evaluation(path, evaluation, as_json=args.json)
  return 2 if evaluation.missing else 0


def evaluate_predictions_file(path, skip_bad: bool = False) -> tuple[dict, Predictions]:
  preds = predictions_lib.read_predictions_csv(path, skip_bad=skip_bad)
  return metrics.accuracy_table(preds.pred_latlon, preds.true_latlon), preds


def predictions_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog=f"{PROG} predictions",
                                   description="Accuracy table of a per-image predictions CSV.")
  parser.add_argument("file", type=pathlib.Path)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--skip-bad", action="store_true", help="skip (and list) bad rows instead of failing")
  args = parser.parse_args(argv)
  try:
    table, preds = evaluate_predictions_file(args.file, skip_bad=args.skip_bad)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if preds.bad_rows:
    print(f"skipped {len(preds.bad_rows)} bad row(s):", file=sys.stderr)
    for line_no, why in preds.bad_rows:
      print(f"  line {line_no}: {why}", file=sys.stderr)
  if args.json:
    out = dict(table)
    if args.skip_bad:
      out["skipped"] = len(preds.bad_rows)
    print(json.dumps(out))
  else:
    print(metrics.format_table({args.file.stem: table}, mean_km=True))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "predictions":
    return predictions_main(argv[1:])
  return cli.run(_evaluate_main, argv, prog=PROG)


if __name__ == "__main__":
  sys.exit(main())
