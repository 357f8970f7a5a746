"""Model evaluation on the benchmarks: `translocator-eval --workdir DIR | --checkpoint PATH --datasets ...`.

For each dataset the model runs over the test split (centre crop, or five-crop TTA averaging the softmaxes),
predicts by the hierarchical f* rule over the three partitions (geo.hierarchy) and, for comparison, by each
partition alone, and prints the paper's table (accuracy within 1 / 25 / 200 / 750 / 2500 km, median km,
GeoScore) with the paper's TransLocator row beside the real benchmarks, plus two references: always predicting
the most common training cell ('chance') and, for earth_patches, a nearest-neighbour search over raw 8x8 colour
thumbnails of the training patches ('knn'). Per-image predictions go to DIR/predictions/<dataset>.csv in the
layout `python -m translocator_jax.evaluate predictions` reads. Batches are sharded over all devices the same way
as in training; the last batch is padded and masked.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from translocator_jax.data.records import schema
from translocator_jax.geo.distance import haversine_km_numpy

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
ACC_KEYS = tuple(f"acc_{t}km" for t in THRESHOLDS_KM)
DEFAULT_DATASETS = ("im2gps", "im2gps3k", "yfcc4k", "yfcc26k", "earth_patches")
# TransLocator (ViT-B/16), Pramanick et al. ECCV 2022, Table 1: % within 1 / 25 / 200 / 750 / 2500 km.
PAPER_ROWS = {
    "im2gps": (19.9, 48.1, 64.6, 75.6, 86.7),
    "im2gps3k": (11.8, 31.1, 46.7, 58.9, 80.1),
    "yfcc4k": (8.4, 18.6, 27.0, 41.1, 60.4),
}
SPLITS = {"earth_patches": "test"}  # everything else: 'test'
KNN_THUMB = 8


@dataclasses.dataclass
class Predictions:
  """Per-image results of one dataset, in source order, padding removed."""
  index: np.ndarray                      # int64 [N] positions in the source
  true_latlon: np.ndarray                # float32 [N, 2]
  pred_latlon: dict[str, np.ndarray]     # method ('fstar', 'coarse', 'middle', 'fine') -> float32 [N, 2]
  fine_class: np.ndarray | None = None   # int32 [N] the f* (or finest head's) cell


def _gather(x) -> np.ndarray:
  """All processes' rows of a batch (a global jax array or a host-local numpy array), on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_forward(model, palette: np.ndarray | None = None) -> Any:
  """jitted (params, image, seg) -> head name -> probabilities [B, C]; five-crop inputs ([B, 5, ...]) averaged.

  uint8 batches (pipeline.eval_loader(finish='device')) are finished here (data.device_finish; `palette` for
  seg_input='palette'); float32 ones pass through.
  """
  from translocator_jax.data.pipeline import device_finish  # pylint: disable=g-import-not-at-top
  finish = device_finish.DeviceFinish(getattr(model, "seg_input", "palette"), palette)

  def forward(params, image, seg):
    image, seg = finish(image, seg)
    crops = image.ndim == 5
    if crops:
      b, k = image.shape[:2]
      image = image.reshape((b * k,) + image.shape[2:])
      seg = seg.reshape((b * k,) + seg.shape[2:])
    logits = model.apply({"params": params}, image, seg, train=False)
    probs = {h: jax.nn.softmax(l.astype(jnp.float32), axis=-1) for h, l in logits.items()}
    if crops:
      probs = {h: p.reshape((b, k) + p.shape[1:]).mean(axis=1) for h, p in probs.items()}
    return probs

  return jax.jit(forward)


def _hierarchy(partitions):
  from translocator_jax.geo import hierarchy  # pylint: disable=g-import-not-at-top
  return hierarchy.Hierarchy.from_partitions(list(partitions))


def predict_dataset(model, params, batches: Iterable[Mapping[str, np.ndarray]], *, mesh, partitions,
                    heads: Mapping[str, int], tta: str = "center", desc: str = "eval",
                    forward=None, total: int | None = None, progress: bool = True,
                    fsdp: bool = False, palette: np.ndarray | None = None) -> Predictions:
  """Runs the model over padded batches (this process's shard) and predicts coordinates.

  Args:
    model, params: the flax module and its parameters (placed on devices, or host arrays: replicated).
    batches: iterable of batch dicts (image, seg, latlon, mask, index).
    mesh: the device mesh (batches are split over its 'data' axis).
    partitions: [coarse, middle, fine] geo.cells.Partition of the training set.
    heads: config.model.heads (which partition heads the model has).
    palette: [K, 3] uint8 colours, to finish uint8 class maps (seg_input='palette') when `forward` is not given.
  """
  from translocator_jax.runtime import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  forward = forward or make_forward(model, palette)
  geo_heads = [h for h in schema.PARTITION_NAMES if h in heads]
  if not geo_heads:
    raise ValueError(f"config.model.heads {list(heads)} has no geo-cell head ({schema.PARTITION_NAMES})")
  part_of = dict(zip(schema.PARTITION_NAMES, partitions))
  for h in geo_heads:
    if int(heads[h]) != part_of[h].num_classes:
      raise ValueError(f"head {h!r} has {heads[h]} classes but its partition has {part_of[h].num_classes} cells")
  use_fstar = len(geo_heads) == 3
  hier = _hierarchy(partitions) if use_fstar else None
  if any(isinstance(x, np.ndarray) for x in jax.tree.leaves(params)):  # host params: place them as in training
    params = jax.device_put(params, sharding_lib.state_shardings(params, mesh, fsdp))
  out = {"index": [], "latlon": [], "mask": [], "fine": []}
  preds = {m: [] for m in (["fstar"] if use_fstar else []) + geo_heads}
  for batch in tqdm.tqdm(batches, desc=desc, total=total, leave=False,
                         disable=jax.process_index() != 0 or not progress):
    dev = sharding_lib.put_batch({"image": batch["image"], "seg": batch["seg"]}, mesh)
    probs = forward(params, dev["image"], dev["seg"])
    if use_fstar:
      from translocator_jax.geo import hierarchy  # pylint: disable=g-import-not-at-top
      classes, _, latlon = hierarchy.fstar_topk(hier, probs["coarse"], probs["middle"], probs["fine"], 1)
      preds["fstar"].append(_gather(latlon)[:, 0])
      out["fine"].append(_gather(classes)[:, 0])
    for h in geo_heads:
      cls = _gather(jnp.argmax(probs[h], axis=-1))
      preds[h].append(np.asarray(part_of[h].latlon_mean, np.float32)[cls])
      if not use_fstar and h == geo_heads[-1]:
        out["fine"].append(cls)
    for key in ("index", "latlon", "mask"):
      out[key].append(_gather(np.asarray(batch[key])))
  if not out["index"]:
    raise ValueError(f"{desc}: no batches")
  mask = np.concatenate(out["mask"]).astype(bool)
  index = np.concatenate(out["index"])[mask]
  order = np.argsort(index, kind="stable")
  return Predictions(
      index=index[order].astype(np.int64),
      true_latlon=np.concatenate(out["latlon"])[mask][order].astype(np.float32),
      pred_latlon={m: np.concatenate(v)[mask][order].astype(np.float32) for m, v in preds.items()},
      fine_class=np.concatenate(out["fine"])[mask][order].astype(np.int32),
  )


def accuracy_table(pred_latlon: np.ndarray, true_latlon: np.ndarray) -> dict[str, float]:
  from translocator_jax.geo import metrics  # pylint: disable=g-import-not-at-top
  return metrics.accuracy_table(np.asarray(pred_latlon, np.float32), np.asarray(true_latlon, np.float32),
                                thresholds_km=THRESHOLDS_KM)


def tables_from_predictions(preds: Predictions) -> dict[str, dict[str, float]]:
  """method -> accuracy table (acc_*km, median_km, mean_km, geoscore, n)."""
  return {m: accuracy_table(p, preds.true_latlon) for m, p in preds.pred_latlon.items()}


# ------------------------------------------------------------------------------------------------ baselines


def most_common_cell_latlon(partitions) -> np.ndarray:
  """[2] the mean coordinate of the coarse partition's most populous training cell (the 'chance' prediction)."""
  coarse = partitions[0]
  return np.asarray(coarse.latlon_mean, np.float32)[int(np.argmax(np.asarray(coarse.counts)))]


def chance_table(partitions, true_latlon: np.ndarray) -> dict[str, float]:
  const = np.broadcast_to(most_common_cell_latlon(partitions), true_latlon.shape)
  return accuracy_table(const, true_latlon)


def thumbnails(source, indices: Sequence[int] | None = None, size: int = KNN_THUMB, desc: str = "thumbnails"
               ) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, size*size*3] raw colour thumbnails (area-averaged), float32 [N, 2] latlon) of a source."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  indices = range(len(source)) if indices is None else indices
  feats, latlon = [], []
  for i in tqdm.tqdm(indices, desc=desc, leave=False, disable=jax.process_index() != 0):
    ex = source[int(i)]
    img = Image.fromarray(np.asarray(ex[schema.IMAGE], np.uint8)).resize((size, size), Image.BOX)
    feats.append(np.asarray(img, np.float32).reshape(-1))
    latlon.append(np.asarray(ex[schema.LATLON], np.float32))
  return np.stack(feats), np.stack(latlon)


def knn_predict(train_feats: np.ndarray, train_latlon: np.ndarray, query_feats: np.ndarray,
                chunk: int = 1024) -> np.ndarray:
  """latlon of each query's nearest training thumbnail (squared L2)."""
  sq = (train_feats ** 2).sum(1)
  out = np.empty((len(query_feats), 2), np.float32)
  for s in range(0, len(query_feats), chunk):
    q = query_feats[s:s + chunk]
    d = sq[None, :] - 2.0 * q @ train_feats.T
    out[s:s + chunk] = train_latlon[np.argmin(d, axis=1)]
  return out


def knn_table(train_source, test_source, test_index: np.ndarray, true_latlon: np.ndarray) -> dict[str, float]:
  train_x, train_ll = thumbnails(train_source, desc="kNN: train thumbnails")
  test_x, _ = thumbnails(test_source, test_index, desc="kNN: test thumbnails")
  return accuracy_table(knn_predict(train_x, train_ll, test_x), true_latlon)


# ------------------------------------------------------------------------------------------------ the table


def format_rows(rows: Sequence[tuple[str, Mapping[str, float] | None]]) -> str:
  """The paper's layout: one row per (dataset / method), % within each threshold, median km, GeoScore."""
  head = f"{'':50s}" + "".join(f"{f'{t} km':>9s}" for t in THRESHOLDS_KM) + f"{'median km':>11s}{'GeoScore':>10s}" \
      + f"{'n':>8s}"
  lines = [head, "-" * len(head)]
  for name, t in rows:
    if t is None:
      lines.append("")
      continue
    accs = "".join(f"{100.0 * t[k]:9.1f}" if k in t else f"{'':9s}" for k in ACC_KEYS)
    med = f"{t['median_km']:11.1f}" if "median_km" in t else f"{'-':>11s}"
    gs = f"{t['geoscore']:10.1f}" if "geoscore" in t else f"{'-':>10s}"
    n = f"{int(t['n']):8d}" if "n" in t else f"{'':8s}"
    lines.append(f"{name:50s}{accs}{med}{gs}{n}")
  return "\n".join(lines)


def paper_table(name: str) -> dict[str, float] | None:
  if name not in PAPER_ROWS:
    return None
  return {k: v / 100.0 for k, v in zip(ACC_KEYS, PAPER_ROWS[name])}


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="translocator-eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training workdir (its newest readable checkpoint, or --which best)")
  src.add_argument("--checkpoint", help="one checkpoint step directory (WORKDIR/checkpoints/STEP)")
  p.add_argument("--which", default="latest", choices=("latest", "best"))
  p.add_argument("--datasets", default=None,
                 help=f"comma-separated, from {','.join(DEFAULT_DATASETS)} (default: config.eval.datasets)")
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
  """Predictions and result tables ('fstar', partitions, 'chance', 'knn') of one dataset."""
  from translocator_jax.data import registry as data_lib  # pylint: disable=g-import-not-at-top
  info = train_info if name == train_info.name and train_info.tfds_dir else data_lib.dataset_info(config, name)
  split = SPLITS.get(name, "test")
  batches, n = data_lib.eval_batches(config, info, split, batch_size, tta)
  preds = predict_dataset(model, params, batches, mesh=mesh, partitions=partitions, heads=config.model.heads,
                          tta=tta, desc=f"eval {name}", total=len(batches) if hasattr(batches, "__len__") else None,
                          fsdp=bool(config.train.get("fsdp", False)), palette=info.palette)
  if len(preds.index) != n:
    raise RuntimeError(f"{name}: predicted {len(preds.index)} images of {n}")
  tables = tables_from_predictions(preds)
  tables["chance"] = chance_table(partitions, preds.true_latlon)
  if knn and name == "earth_patches":
    from translocator_jax.data.records import sources  # pylint: disable=g-import-not-at-top
    tables["knn"] = knn_table(sources.open_source(info.tfds_dir, "train"), sources.open_source(info.tfds_dir, split),
                              preds.index, preds.true_latlon)
  return preds, tables


def dataset_map_paths(out_dir, name: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(error map, accuracy curve) files that `--maps out_dir` writes for dataset `name`."""
  out_dir = pathlib.Path(out_dir)
  return out_dir / f"{name}_errors.png", out_dir / f"{name}_accuracy_curve.png"


def draw_dataset_maps(out_dir, name: str, preds: Predictions, partitions, main_method: str) -> list[pathlib.Path]:
  """The error map (main method) and the accuracy-against-distance curves (every method and chance) of a dataset."""
  from translocator_jax.eval import maps  # pylint: disable=g-import-not-at-top
  errors_png, curve_png = dataset_map_paths(out_dir, name)
  errors = maps.draw_errors(errors_png, preds.pred_latlon[main_method], preds.true_latlon,
                            title=f"{name}: true location -> prediction ({main_method})")
  curves = {("TransLocator-JAX (f*)" if m == "fstar" else f"{m} partition only"):
            haversine_km_numpy(preds.pred_latlon[m], preds.true_latlon) for m in preds.pred_latlon}
  chance = np.broadcast_to(most_common_cell_latlon(partitions), preds.true_latlon.shape)
  curves["chance (most common cell)"] = haversine_km_numpy(chance, preds.true_latlon)
  curve = maps.plot_accuracy_curve(curve_png, curves, title=name)
  return [errors, curve]


def image_ids(info, split: str, index: np.ndarray) -> list[str]:
  if info.tfds_dir is None:
    return [str(i) for i in index]
  from translocator_jax.data.records import sources  # pylint: disable=g-import-not-at-top
  src = sources.open_source(info.tfds_dir, split, decode=False)
  ids = []
  for i in index:
    v = src[int(i)][schema.IMAGE_ID]
    ids.append(v.decode() if isinstance(v, bytes) else str(v))
  return ids


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  from translocator_jax import models  # pylint: disable=g-import-not-at-top
  from translocator_jax.geo import predictions_io  # pylint: disable=g-import-not-at-top
  from translocator_jax.runtime import checkpoints  # pylint: disable=g-import-not-at-top
  from translocator_jax.data import registry as data_lib  # pylint: disable=g-import-not-at-top
  from translocator_jax.runtime import sharding as sharding_lib  # pylint: disable=g-import-not-at-top

  sharding_lib.maybe_initialize_distributed()
  path = args.workdir or args.checkpoint
  config, params = checkpoints.restore_for_inference(path, which=args.which)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  datasets = (args.datasets.split(",") if args.datasets else list(config.eval.get("datasets", DEFAULT_DATASETS)))
  tta = args.tta or config.eval.get("tta", "center")
  mesh = sharding_lib.make_mesh()
  batch_size = int(args.batch_size or config.eval.get("batch_size", 256))
  batch_size = max(jax.device_count(), batch_size // jax.device_count() * jax.device_count())
  model = models.build_model(config.model)
  train_info = data_lib.dataset_info(config, config.data.train, need_records=False)  # its partitions
  partitions = data_lib.load_partitions(train_info)
  if partitions is None:
    raise SystemExit(f"translocator-eval: the training set {config.data.train!r} has no partitions to predict with")
  out_dir = (checkpoints.as_path(args.output_dir) if args.output_dir
             else checkpoints.workdir_of(path) / "predictions")  # local or gs://
  rows, missing, results = [], [], []
  for name in datasets:
    name = name.strip()
    try:
      preds, tables = evaluate_dataset(config, model, params, name, mesh=mesh, train_info=train_info,
                                       partitions=partitions, tta=tta, batch_size=batch_size, knn=not args.no_knn)
    except data_lib.DatasetMissingError as e:
      missing.append(name)
      print(f"translocator-eval: {e}", file=sys.stderr)
      continue
    main_method = "fstar" if "fstar" in tables else [m for m in schema.PARTITION_NAMES if m in tables][-1]
    info = train_info if name == train_info.name and train_info.tfds_dir else data_lib.dataset_info(config, name)
    csv_path = out_dir / f"{name}.csv"
    if jax.process_index() == 0:
      out_dir.mkdir(parents=True, exist_ok=True)
      extra = {"pred_cell": preds.fine_class}
      extra.update({f"pred_lat_{m}": preds.pred_latlon[m][:, 0] for m in preds.pred_latlon if m != main_method})
      extra.update({f"pred_lon_{m}": preds.pred_latlon[m][:, 1] for m in preds.pred_latlon if m != main_method})
      predictions_io.write_predictions_csv(csv_path, image_ids(info, SPLITS.get(name, "test"), preds.index),
                                           preds.true_latlon, preds.pred_latlon[main_method], extra_columns=extra)
    if args.maps and jax.process_index() == 0:
      draw_dataset_maps(args.maps, name, preds, partitions, main_method)
    record = {"dataset": name, "method": main_method, **tables[main_method],
              "chance_acc_750km": tables["chance"]["acc_750km"], "predictions_csv": str(csv_path)}
    if "knn" in tables:
      record["knn_acc_750km"] = tables["knn"]["acc_750km"]
    record["per_partition"] = {m: tables[m] for m in schema.PARTITION_NAMES if m in tables}
    results.append(record)
    rows.append((f"{name} / TransLocator-JAX ({main_method})", tables[main_method]))
    for m in schema.PARTITION_NAMES:
      if m in tables:
        rows.append((f"{name} / {m} partition only", tables[m]))
    rows.append((f"{name} / chance (most common cell)", tables["chance"]))
    if "knn" in tables:
      rows.append((f"{name} / kNN raw 8x8 thumbnails", tables["knn"]))
    if paper_table(name):
      rows.append((f"{name} / TransLocator (paper)", paper_table(name)))
    rows.append(("", None))
  if jax.process_index() == 0:
    if args.json:
      for r in results:
        print(json.dumps(r, default=float))
    elif rows:
      print(f"{path}  (tta={tta})")
      print(format_rows(rows[:-1]))
  return 2 if missing else 0


if __name__ == "__main__":
  sys.exit(main())
