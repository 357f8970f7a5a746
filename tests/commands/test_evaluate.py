"""Evaluator CLI: reproduces the published ISNs summaries; bad rows."""
import json

import numpy as np
import pytest

from translocator_jax.commands import evaluate
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


def test_a_file_saved_by_a_spreadsheet_reads_the_same(tmp_path, capsys):
  # UTF-8 with a byte-order mark and CRLF line ends, as spreadsheet programs save CSV.
  plain = tmp_path / "plain.csv"
  write_predictions_csv(plain, ["a", "b", "c"], [[10, 20], [0, 0], [1, 1]], [[10, 20], [0, 1], [40, 1]])
  saved = tmp_path / "saved.csv"
  saved.write_bytes(b"\xef\xbb\xbf" + plain.read_text().replace("\n", "\r\n").encode())
  assert evaluate.main(["predictions", str(plain), "--json"]) == 0
  want = json.loads(capsys.readouterr().out)
  assert evaluate.main(["predictions", str(saved), "--json"]) == 0
  assert json.loads(capsys.readouterr().out) == want and want["n"] == 3
  assert read_predictions_csv(saved).image_ids == ["a", "b", "c"]


def test_a_file_with_a_header_and_no_rows_is_an_error_naming_it(tmp_path, capsys):
  path = tmp_path / "empty_rows.csv"
  path.write_text("img_id,gt_lat,gt_lon,pred_lat,pred_lon\n")
  assert evaluate.main(["predictions", str(path)]) != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "empty_rows.csv" in err[0] and "no data rows" in err[0]
  (tmp_path / "nothing.csv").write_text("")
  assert evaluate.main(["predictions", str(tmp_path / "nothing.csv")]) != 0
  assert "empty file" in capsys.readouterr().err


def test_partition_files_with_a_byte_order_mark_and_crlf_load(shared_data, tmp_path):
  from translocator_jax.geo import load_partition_csv
  src = shared_data / "partitions" / "cells_50_5000.csv"
  copy = tmp_path / "cells.csv"
  copy.write_bytes(b"\xef\xbb\xbf" + src.read_text().replace("\n", "\r\n").encode())
  a, b = load_partition_csv(src), load_partition_csv(copy)
  assert a.hex_ids == b.hex_ids and a.num_images == b.num_images
  np.testing.assert_array_equal(a.latlon_mean, b.latlon_mean)


def test_a_missing_predictions_file_is_one_line_naming_the_program_and_the_file(tmp_path, capsys):
  missing = tmp_path / "missing.csv"
  assert evaluate.main(["predictions", str(missing)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("translocator-eval predictions: error:") and "missing.csv" in err[0]
