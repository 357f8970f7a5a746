"""`translocator-eval --workdir DIR | --checkpoint PATH [--datasets ...]`, and `translocator-eval predictions FILE.csv`.

For each dataset the model runs over the test split (centre crop of config.eval.crop_fraction, or five-crop TTA
averaging the softmaxes), predicts by the hierarchical f* rule over the three partitions and, for comparison, by
each partition alone, and prints the paper's table (accuracy within 1 / 25 / 200 / 750 / 2500 km, median km,
GeoScore) with the paper's TransLocator row beside the real benchmarks, plus two references: always predicting the
most common training cell ('chance') and, for earth_patches, a nearest-neighbour search over raw 8x8 colour
thumbnails of the training patches ('knn'). Per-image predictions go to DIR/predictions/<dataset>.csv.

`predictions FILE.csv [--json] [--skip-bad]` prints the table of a per-image predictions file (this project's
layout or GeoEstimation's).

`--config configs/X.py | --workdir DIR --compile-only --topology v5e:4x4 [--gallery-rows N] [--json out.json]`
compiles the evaluation forward and the gallery search for a TPU topology from any machine (eval/aot.py) and
prints what a chip needs of them, alone and together; exit 2 with one line when they do not fit.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from translocator_jax import errors, models
from translocator_jax.data import registry
from translocator_jax.data.pipeline import augment
from translocator_jax.eval import aot as eval_aot, benchmark
from translocator_jax.eval.leakage import DUP_SIM, UNSEEN_KM
from translocator_jax.geo import metrics
from translocator_jax.infer import refine
from translocator_jax.runtime import checkpoints, cli, config_io, tpu

PROG = benchmark.PROG


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_checkpoint_args(p)
  p.add_argument("--datasets", default=None,
                 help=f"comma-separated, from {','.join(registry.EVAL_DATASETS)} (default: config.eval.datasets)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the benchmarks (default: config.data.data_dir)")
  p.add_argument("--tta", default=None, choices=augment.TTA_MODES,
                 help="centre crop, five crops, or ten (the five and their mirrors, as the authors); softmaxes "
                      "averaged over the crops (default: config.eval.tta)")
  p.add_argument("--batch-size", type=int, default=None, help="global eval batch (default: config.eval.batch_size)")
  p.add_argument("--output-dir", default=None, help="per-image CSVs go here (default: WORKDIR/predictions)")
  p.add_argument("--no-knn", action="store_true", help="skip the raw-thumbnail kNN baseline on earth_patches")
  p.add_argument("--maps", default=None, metavar="DIR",
                 help="draw DIR/<dataset>_errors.png (true -> predicted over the Blue Marble) and "
                      "DIR/<dataset>_accuracy_curve.png (share within d km against d, per method)")
  p.add_argument("--json", action="store_true", help="print one JSON object per dataset instead of the table")
  p.add_argument("--refine", default=None, choices=refine.REFINE_MODES,
                 help="'gallery': refine f* by retrieval over W/gallery (translocator-gallery builds it; default: "
                      "config.eval.refine)")
  p.add_argument("--gallery", default=None, metavar="DIR",
                 help="the gallery to use (default: WORKDIR/gallery); with --refine none it still gives each "
                      "test image's highest similarity to a training image (near-duplicates)")
  p.add_argument("--unseen-km", type=float, default=UNSEEN_KM,
                 help="a test image is of an unseen place when no training image lies within this many km")
  p.add_argument("--dup-sim", type=float, default=DUP_SIM,
                 help="a test image is a likely near-duplicate when its similarity to a training image is above this")
  cli.add_verbose_arg(p)
  return p.parse_args(argv)


def _evaluate_main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  path = args.workdir or args.checkpoint
  datasets = args.datasets.split(",") if args.datasets else None
  evaluation = benchmark.evaluate_checkpoint(path, which=args.which, datasets=datasets, data_dir=args.data_dir,
                                             tta=args.tta, batch_size=args.batch_size, output_dir=args.output_dir,
                                             knn=not args.no_knn, maps_dir=args.maps, refine_mode=args.refine,
                                             gallery_dir=args.gallery, unseen_km=args.unseen_km,
                                             dup_sim=args.dup_sim)
  benchmark.print_evaluation(path, evaluation, as_json=args.json)
  return 2 if evaluation.missing else 0


def predictions_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog=f"{PROG} predictions",
                                   description="Accuracy table of a per-image predictions CSV.")
  parser.add_argument("file", type=pathlib.Path)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--skip-bad", action="store_true", help="skip (and list) bad rows instead of failing")
  args = parser.parse_args(argv)
  try:
    table, preds = benchmark.evaluate_predictions_file(args.file, skip_bad=args.skip_bad)
  except (errors.UserError, OSError) as e:  # a missing, empty or malformed file: the person's input, in the common form
    print(cli.error_line(f"{PROG} predictions", e), file=sys.stderr)
    return cli.USAGE_ERROR
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


def parse_compile_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog=f"{PROG} --compile-only", description="Compile the evaluation forward and the gallery search for a TPU "
      "topology from any machine (libtpu; no TPU, no data, nothing written) and print what a chip needs.")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--config", help="configs/X.py[:arg], the model to evaluate")
  src.add_argument("--workdir", help="a training workdir: its config.json")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field (repeatable)")
  p.add_argument("--tta", default=None, choices=augment.TTA_MODES, help="default: config.eval.tta")
  p.add_argument("--batch-size", type=int, default=None, help="global eval batch (default: config.eval.batch_size)")
  p.add_argument("--gallery-rows", type=int, default=eval_aot.MP16_ROWS,
                 help=f"rows of the refinement gallery (default {eval_aot.MP16_ROWS}: all of MP-16)")
  tpu.add_compile_args(p)
  cli.add_verbose_arg(p)
  args = p.parse_args(argv)
  tpu.check_compile_args(args, p)
  return args


def _compile_main(argv: Sequence[str]) -> int:
  args = parse_compile_args(argv)
  if args.workdir:
    path = checkpoints.as_path(args.workdir) / checkpoints.CONFIG_FILE
    if not path.exists():
      raise FileNotFoundError(f"{path}: no such file (a training workdir holds the run's config.json)")
    config = checkpoints.config_from_json(path.read_text())
  else:
    config = config_io.load_config(args.config)
  config = config_io.apply_overrides(config, args.overrides)
  models.model_kwargs(config.model)
  if args.batch_size:
    config.eval.batch_size = int(args.batch_size)
  tta = args.tta or config.eval.tta

  def compile_at(trial):
    trial.eval.batch_size = int(trial.data.batch_size) if args.max_batch else int(trial.eval.batch_size)
    return eval_aot.compile_eval(trial, args.topology, args.slices, tta=tta, gallery_rows=args.gallery_rows)

  if args.max_batch:  # tpu.max_batch varies data.batch_size: the eval batch here
    config.data.batch_size = int(config.eval.batch_size)
  return tpu.run_compile_only(args, config, compile_at, "evaluation forward + gallery search")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "predictions":
    return predictions_main(argv[1:])
  if "--compile-only" in argv:
    return cli.run(_compile_main, argv, prog=PROG)
  return cli.run(_evaluate_main, argv, prog=PROG)


if __name__ == "__main__":
  sys.exit(main())
