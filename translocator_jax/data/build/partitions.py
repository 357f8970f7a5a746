"""The three S2 partitions of a training set (GeoEstimation CSV layout), from its coordinates.

Coordinates come from a metadata CSV (LAT/LON columns, e.g. mp16_places365.csv) or a built dataset of the record
schema (its `latlon` field; images are not decoded). Bad CSV rows (non-numeric, NaN, out of range) are skipped
and listed by line in OUT_DIR/partitions_report.json; they never stop the build.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Sequence

import numpy as np
import tqdm

from translocator_jax import errors
from translocator_jax.data.build import images
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources
from translocator_jax.geo import build_partition, write_partition_csv

DEFAULT_TAU_MAX = (5000, 2000, 1000)  # coarse, middle, fine (the MP-16 partitions)


def read_csv_latlon(path: pathlib.Path, lat_column: str = "LAT", lon_column: str = "LON",
                    progress: bool = True) -> tuple[np.ndarray, list[dict]]:
  """(float64 [N, 2] good coordinates, skipped rows as {"source": "FILE:line L", "reason": ...})."""
  latlon, skipped = [], []
  with path.open(newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    if not {lat_column, lon_column} <= set(reader.fieldnames or []):
      raise errors.DataError(f"{path}: needs columns {lat_column!r} and {lon_column!r}, has {reader.fieldnames}")
    for line, row in enumerate(tqdm.tqdm(reader, desc="coordinates", disable=not progress), start=2):
      try:
        latlon.append(images.check_latlon(row[lat_column], row[lon_column]))
      except images.BadInput as e:
        skipped.append({"source": f"{path}:line {line}", "reason": str(e)})
  return np.asarray(latlon, np.float64).reshape(-1, 2), skipped


def read_dataset_latlon(dataset_dir: pathlib.Path, split: str, progress: bool = True) -> np.ndarray:
  source = sources.open_source(dataset_dir, split, decode=False)  # coordinates only: no JPEG/PNG decoding
  return np.array([source[i][schema.LATLON] for i in tqdm.trange(len(source), desc="coordinates",
                                                                 disable=not progress)], np.float64).reshape(-1, 2)


def build_partitions(input_path: os.PathLike | str, out_dir: os.PathLike | str, *, split: str = "train",
                     tau_min: int = 50, tau_max: Sequence[int] = DEFAULT_TAU_MAX, lat_column: str = "LAT",
                     lon_column: str = "LON", progress: bool = True) -> dict:
  """Writes OUT_DIR/cells_{tau_min}_{tau_max}.csv for each tau_max and partitions_report.json; returns the report."""
  input_path, out_dir = pathlib.Path(input_path), pathlib.Path(out_dir)
  if input_path.is_dir():
    latlon, skipped = read_dataset_latlon(input_path, split, progress), []
  elif input_path.is_file():
    latlon, skipped = read_csv_latlon(input_path, lat_column, lon_column, progress)
  else:
    raise FileNotFoundError(f"{input_path}: no such CSV file or dataset folder")
  if not len(latlon):
    raise errors.DataError(f"{input_path}: no usable coordinates ({len(skipped)} bad rows)")
  out_dir.mkdir(parents=True, exist_ok=True)
  report = {"coordinates": len(latlon), "skipped": skipped, "partitions": []}
  for t in tqdm.tqdm(list(tau_max), desc="partitions", disable=not progress):
    p = build_partition(latlon, tau_min, t)
    out = out_dir / f"cells_{tau_min}_{t}.csv"
    write_partition_csv(p, out)
    report["partitions"].append({"file": str(out), "classes": int(p.num_classes),
                                 "assigned": int(np.asarray(p.counts).sum())})
  (out_dir / "partitions_report.json").write_text(json.dumps(report, indent=1))
  return report
