"""Benchmark evaluation CLI.

  python -m translocator_jax.evaluate predictions FILE.csv [--json] [--skip-bad]

prints the results table (street 1 km ... continent 2500 km, median, mean km, GeoScore, count) of a
per-image prediction file (project or GeoEstimation layout). Without the `predictions` subcommand,
arguments go to translocator_jax.eval.inference.main (model evaluation).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from translocator_jax.geo import predictions_io
from translocator_jax.geo.metrics import accuracy_table, format_table


def evaluate_predictions_file(path, skip_bad: bool = False) -> tuple[dict, predictions_io.Predictions]:
  preds = predictions_io.read_predictions_csv(path, skip_bad=skip_bad)
  return accuracy_table(preds.pred_latlon, preds.true_latlon), preds


def _predictions_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="translocator-eval predictions",
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
    print(format_table({args.file.stem: table}))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "predictions":
    return _predictions_main(argv[1:])
  from translocator_jax.runtime import perf  # pylint: disable=g-import-not-at-top
  perf.configure_cpu_runtime()  # translocator-eval: before JAX starts its CPU backend
  from translocator_jax.eval import inference as eval_model  # lazy: pulls in the model stack
  return eval_model.main(argv)


if __name__ == "__main__":
  sys.exit(main())
