"""data_prep.build_partitions: partitions from a metadata CSV (bad rows listed, never fatal) or a built dataset."""
import json

import numpy as np
import pytest

import dataset_fixtures as fx
from translocator_jax.commands import build as cli
from translocator_jax.geo import cells


def _mp16_rows(shared_data, n_per_cell=60):
  """Coordinates around the means of a few shipped fine cells: each a dense cluster."""
  fine = cells.load_partition_csv(shared_data / "partitions" / "cells_50_1000.csv")
  rng = np.random.default_rng(0)
  rows = []
  for c in (0, 100, 2000):
    for k in range(n_per_cell):
      lat, lon = fine.latlon_mean[c] + rng.normal(0, 0.01, 2)
      rows.append([f"c{c}_{k}.jpg", "a", f"{lat:.6f}", f"{lon:.6f}", 1, 1, 1, 0.1, 0.1, 0.8])
  return rows


def test_csv_with_bad_rows_builds_and_lists_each_bad_row(tmp_path, shared_data, capsys):
  rows = _mp16_rows(shared_data)
  bad = [["x1.jpg", "a", "nan", "2.0"] + [1] * 6, ["x2.jpg", "a", "95.0", "2.0"] + [1] * 6,
         ["x3.jpg", "a", "north", "2.0"] + [1] * 6]
  fx.write_csv(tmp_path / "meta.csv", rows[:10] + bad + rows[10:])
  assert cli.partitions_main(["--input", str(tmp_path / "meta.csv"), "--output", str(tmp_path / "p"),
                              "--tau-min", "10", "--tau-max", "100", "40", "--no-progress"]) == 0
  assert "skipped rows: 3" in capsys.readouterr().out
  report = json.loads((tmp_path / "p" / "partitions_report.json").read_text())
  assert report["coordinates"] == len(rows)
  assert [s["source"].rsplit(":", 1)[1] for s in report["skipped"]] == ["line 12", "line 13", "line 14"]
  assert "not finite" in report["skipped"][0]["reason"] and "out of range" in report["skipped"][1]["reason"]
  coarse = cells.load_partition_csv(tmp_path / "p" / "cells_10_100.csv")
  fine = cells.load_partition_csv(tmp_path / "p" / "cells_10_40.csv")
  # Three clusters of 60 (<= tau_max 100, > 40): three coarse cells, each split further in the fine partition.
  assert coarse.num_classes == 3 and int(coarse.counts.sum()) == len(rows)
  counts = np.asarray(fine.counts)
  assert fine.num_classes > 3 and (counts > 10).all() and (counts <= 40).all()


def test_missing_columns_or_input_stop_with_a_clear_message(tmp_path):
  # runtime.cli.run (the data_prep script's set-up) turns these into one line and exit status 2.
  (tmp_path / "m.csv").write_text("id,lat\n1,2\n")
  with pytest.raises(ValueError, match="needs columns 'LAT' and 'LON'"):
    cli.partitions_main(["--input", str(tmp_path / "m.csv"), "--output", str(tmp_path / "p")])
  with pytest.raises(FileNotFoundError, match="no such CSV file or dataset folder"):
    cli.partitions_main(["--input", str(tmp_path / "none.csv"), "--output", str(tmp_path / "p")])
