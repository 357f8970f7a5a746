"""A Prediction as one CSV row: the columns translocator-predict --csv streams and the web page offers for download
(both write the same row, so a row from the page reads like one from the command line)."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from translocator_jax.geo import distance
from translocator_jax.infer.predictor import Prediction


def csv_header(top_k: int, refine: bool) -> list[str]:
  cols = ["path"]
  for k in range(1, top_k + 1):
    cols += [f"lat_{k}", f"lon_{k}", f"prob_{k}"]
  cols += ["radius50_km", "radius90_km", "calibrated", "place", "country", "exif_lat", "exif_lon", "error_km"]
  if refine:
    cols += ["refined_lat", "refined_lon", "refined_error_km", "matched_image_id", "matched_similarity"]
  return cols + ["error"]


def csv_row(p: Prediction, top_k: int, refine: bool) -> list[Any]:
  """One photo's row of csv_header (blank cells where unknown)."""
  row: list[Any] = [p.source]
  for k in range(top_k):
    c = p.candidates[k] if k < len(p.candidates) else None
    row += [f"{c.latlon[0]:.5f}", f"{c.latlon[1]:.5f}", f"{c.probability:.6f}"] if c else ["", "", ""]
  top = p.candidates[0] if p.candidates else None
  error_km = refined_km = ""
  if top and p.true_latlon is not None:
    truth = np.asarray(p.true_latlon)
    error_km = f"{float(distance.haversine_km_numpy(np.asarray(top.latlon), truth)):.2f}"
    if p.refined:
      refined_km = f"{float(distance.haversine_km_numpy(np.asarray(p.refined.latlon), truth)):.2f}"
  row += ["" if p.radius50_km is None else p.radius50_km, "" if p.radius90_km is None else p.radius90_km,
          int(p.calibrated) if top else "", top.place if top else "", top.country if top else ""]
  row += [f"{p.true_latlon[0]:.6f}", f"{p.true_latlon[1]:.6f}"] if p.true_latlon else ["", ""]
  row.append(error_km)
  if refine:
    r = p.refined
    row += ([f"{r.latlon[0]:.5f}", f"{r.latlon[1]:.5f}", refined_km, r.matched_image_id, r.matched_similarity]
            if r else ["", "", "", "", ""])
  return row + [p.error or ""]


def csv_text(p: Prediction, top_k: int, refine: bool) -> str:
  """The header and this photo's row, as a file holding them reads."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(csv_header(top_k, refine))
  writer.writerow(csv_row(p, top_k, refine))
  return out.getvalue()
