"""Per-image predictions of a dataset (the one `Predictions` type) and their CSV files.

Project layout: img_id,gt_lat,gt_lon,pred_lat,pred_lon[,extra...].
GeoEstimation layout: img_id,gt_lat,predicted_lat,gt_long,predicted_long[,...], possibly followed by a blank
line and a summary block (ignored).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Mapping, Sequence

from etils import epath
import numpy as np

from translocator_jax import errors

PROJECT_COLUMNS = ("img_id", "gt_lat", "gt_lon", "pred_lat", "pred_lon")
_LAYOUTS = {
    "project": ("gt_lat", "gt_lon", "pred_lat", "pred_lon"),
    "geoestimation": ("gt_lat", "gt_long", "predicted_lat", "predicted_long"),
}


@dataclasses.dataclass
class Predictions:
  """Per-image results of one dataset, in source order: made by evaluation, read back from a CSV."""
  true_latlon: np.ndarray                  # float32 [N, 2]
  pred_latlon: np.ndarray                  # float32 [N, 2], the main method's
  method: str = "prediction"               # name of the main method ('fstar', 'fine', ...)
  others: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # other methods -> float32 [N, 2]
  image_ids: list[str] | None = None
  index: np.ndarray | None = None          # int64 [N] positions in the source dataset
  fine_class: np.ndarray | None = None     # int32 [N] the predicted cell of the finest partition
  bad_rows: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line, reason) of skipped rows
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # other per-image values -> [N]

  def methods(self) -> dict[str, np.ndarray]:
    """Every method's coordinates, the main one first."""
    return {self.method: self.pred_latlon, **self.others}


def write_predictions_csv(path, image_ids: Sequence[str], true_latlon, pred_latlon,
                          extra_columns: Mapping[str, Sequence] | None = None) -> None:
  true_latlon = np.asarray(true_latlon, np.float64).reshape(-1, 2)
  pred_latlon = np.asarray(pred_latlon, np.float64).reshape(-1, 2)
  extra_columns = dict(extra_columns or {})
  n = len(image_ids)
  for name, col in [("true_latlon", true_latlon), ("pred_latlon", pred_latlon), *extra_columns.items()]:
    if len(col) != n:
      raise ValueError(f"{name} has {len(col)} rows, image_ids has {n}")
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(list(PROJECT_COLUMNS) + list(extra_columns))
  for i in range(n):
    w.writerow([image_ids[i], f"{true_latlon[i, 0]:.6f}", f"{true_latlon[i, 1]:.6f}",
                f"{pred_latlon[i, 0]:.6f}", f"{pred_latlon[i, 1]:.6f}"]
               + [col[i] for col in extra_columns.values()])
  path = epath.Path(path)  # a local path or gs://... (the evaluator writes beside a cloud workdir)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f.getvalue())


def _check_value(name: str, text: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise ValueError(f"{name} is not a number: {text!r}") from None
  if not math.isfinite(v):
    raise ValueError(f"{name} is not finite: {text!r}")
  limit = 90.0 if name.endswith("lat") else 180.0
  if abs(v) > limit:
    raise ValueError(f"{name} = {v} outside [-{limit:g}, {limit:g}]")
  return v


def read_predictions_csv(path, skip_bad: bool = False) -> Predictions:
  """Read either layout. Bad rows raise an errors.DataError naming each line, or with skip_bad are listed."""
  path = epath.Path(path)
  # utf-8-sig: a byte-order mark (as spreadsheet programs save) is not part of the first column's name.
  try:
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise errors.DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
  rows = list(csv.reader(io.StringIO(text, newline="")))
  if not rows:
    raise errors.DataError(f"{path}: empty file")
  header = [h.strip() for h in rows[0]]
  for layout, cols in _LAYOUTS.items():
    if "img_id" in header and all(c in header for c in cols):
      idx = [header.index(c) for c in cols]
      break
  else:
    raise errors.DataError(f"{path}: unknown header {header}; expected {list(PROJECT_COLUMNS)} or the "
                           "GeoEstimation results header (img_id,gt_lat,predicted_lat,gt_long,predicted_long,...)")
  id_col = header.index("img_id")
  ids, latlon, bad = [], [], []
  def is_blank(row):
    return not row or not "".join(row).strip()

  def looks_like_data(row):
    try:
      return len(row) >= len(header) and all(math.isfinite(float(row[i])) for i in idx)
    except ValueError:
      return False

  for line_no, row in enumerate(rows[1:], start=2):
    if is_blank(row):
      # A blank line ends the rows when a summary block (or nothing) follows; a stray one between rows does not.
      following = next((r for r in rows[line_no:] if not is_blank(r)), None)
      if following is None or not looks_like_data(following):
        break
      continue
    try:
      if len(row) < len(header):
        raise ValueError(f"{len(row)} fields, header has {len(header)}")
      vals = [_check_value(header[i], row[i].strip()) for i in idx]
    except ValueError as e:
      bad.append((line_no, str(e)))
      continue
    ids.append(row[id_col])
    latlon.append(vals)
  if bad and not skip_bad:
    listing = "\n".join(f"  line {n}: {why}" for n, why in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise errors.DataError(f"{path}: {len(bad)} bad row(s):\n{listing}{more}")
  if not latlon and not bad:
    raise errors.DataError(f"{path}: no data rows after the header")
  a = np.asarray(latlon, np.float64).reshape(-1, 4)
  return Predictions(a[:, 0:2].astype(np.float32), a[:, 2:4].astype(np.float32), image_ids=ids, bad_rows=bad)
