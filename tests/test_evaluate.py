"""Evaluator CLI: reproduces the published ISNs summaries; bad rows."""
import json

import numpy as np
import pytest

from translocator_jax import evaluate
from translocator_jax.geo import read_predictions_csv, write_predictions_csv

KEYS = ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]


def _isns_files(shared_data):
  files = sorted((shared_data / "benchmarks" / "isns_results_im2gps").glob("*.csv"))
  assert files
  return files


def test_reproduces_isns_summaries(shared_data, capsys):
  for path in _isns_files(shared_data):
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    summary = [float(x) for x in lines[-1].split(",")]
    assert evaluate.main(["predictions", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == 237
    for key, want in zip(KEYS, summary[:5]):
      # The summary holds 6 decimals of count / 237: same count, equal to 4 decimals.
      assert round(got[key] * 237) == round(want * 237), (path.name, key)
      assert abs(got[key] - want) < 5e-5, (path.name, key)
    assert abs(got["mean_km"] - summary[5]) <= 0.005 + 1e-3, path.name


def test_table_output(shared_data, capsys):
  path = _isns_files(shared_data)[0]
  assert evaluate.main(["predictions", str(path)]) == 0
  out = capsys.readouterr().out
  assert "2500 km" in out and "mean km" in out and "GeoScore" in out and "237" in out


def _write_bad(tmp_path):
  path = tmp_path / "p.csv"
  write_predictions_csv(path, ["a", "b", "c", "d", "e"],
                        [[10, 20], [0, 0], [0, 0], [1, 1], [5, 5]], [[10, 20], [0, 1], [0, 0], [1, 1], [5, 5]])
  lines = path.read_text().splitlines()
  lines[3] = "c,abc,0,0,0"          # non-numeric
  lines[4] = "d,1,1,95,1"           # |lat| > 90
  lines[5] = "e,nan,5,5,5"          # NaN
  path.write_text("\n".join(lines) + "\n")
  return path


def test_bad_rows_fail_with_line_numbers(tmp_path, capsys):
  path = _write_bad(tmp_path)
  assert evaluate.main(["predictions", str(path)]) != 0
  err = capsys.readouterr().err
  assert "line 4" in err and "line 5" in err and "line 6" in err and "line 3" not in err


def test_skip_bad_counts_and_lists(tmp_path, capsys):
  path = _write_bad(tmp_path)
  assert evaluate.main(["predictions", str(path), "--json", "--skip-bad"]) == 0
  cap = capsys.readouterr()
  got = json.loads(cap.out)
  assert got["n"] == 2 and got["skipped"] == 3 and got["acc_1km"] == 0.5
  assert "line 5" in cap.err
  preds = read_predictions_csv(path, skip_bad=True)
  assert preds.image_ids == ["a", "b"]
  np.testing.assert_array_equal(preds.pred_latlon, [[10, 20], [0, 1]])


def test_a_stray_blank_line_between_rows_loses_no_rows_and_a_summary_block_is_ignored(tmp_path):
  path = tmp_path / "p.csv"
  write_predictions_csv(path, ["a", "b", "c"], [[10, 20], [0, 0], [1, 1]], [[10, 20], [0, 1], [1, 1]])
  lines = path.read_text().splitlines()
  lines.insert(2, "")  # between rows a and b
  lines += ["", "street acc (1km),city acc (25km)", "0.5,0.75"]
  path.write_text("\n".join(lines) + "\n")
  preds = read_predictions_csv(path)
  assert preds.image_ids == ["a", "b", "c"] and preds.bad_rows == []
  np.testing.assert_array_equal(preds.pred_latlon, [[10, 20], [0, 1], [1, 1]])
