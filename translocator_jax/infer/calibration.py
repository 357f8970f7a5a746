"""Calibrated confidence radii of a checkpoint: fit on the validation split, saved as WORKDIR/calibration.json.

  python -m translocator_jax.commands.calibrate --workdir runs/earth_demo   # translocator-train does it at the end

radius50 and radius90 (geo.confidence) each get the temperature under which they cover 50% and 90% of the
validation photos; Predictor and translocator-eval read the file of their checkpoint (same step and parameter
fingerprint). Without one, the radii use the plain probabilities (temperature 1) and say they are not calibrated.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.geo import confidence, hierarchy
from translocator_jax.infer import queries
from translocator_jax.runtime import checkpoints

PROG = "python -m translocator_jax.commands.calibrate"  # the command that refits (commands/calibrate.py)
FILE = "calibration.json"


@dataclasses.dataclass
class Calibration:
  """What the radii of one checkpoint need: the fine cells' draws and one temperature per radius."""
  points: jax.Array                       # confidence.cell_points of the finest partition
  temperatures: tuple[float, ...] = (1.0, 1.0)
  calibrated: bool = False                # fitted on validation for this very checkpoint

  @classmethod
  def for_partition(cls, fine_partition, temperatures=(1.0, 1.0), calibrated: bool = False) -> "Calibration":
    return cls(jnp.asarray(confidence.cell_points(fine_partition.latlon_mean, fine_partition.cell_spread_km())),
               tuple(float(t) for t in temperatures), calibrated)

  def radii_km(self, cell_probs, centre) -> jax.Array:
    """[B, 2] radius50 and radius90 (km) around centre [B, 2] of [B, C_fine] cell probabilities."""
    return confidence.radii_km(jnp.asarray(cell_probs), jnp.asarray(centre, jnp.float32), self.points,
                               self.temperatures)

  def head_radii(self, partitions) -> Callable[[Mapping[str, jax.Array], jax.Array], jax.Array]:
    """(head probabilities, centre) -> [B, 2] radii: the hook of inference.predict_dataset."""
    hier = _hierarchy(partitions)  # once, not per batch
    return lambda probs, centre: self.radii_km(hierarchy.cell_probabilities(probs, hier), centre)


def _hierarchy(partitions) -> hierarchy.Hierarchy | None:
  partitions = list(partitions)
  return hierarchy.Hierarchy.from_partitions(partitions) if len(partitions) == len(hierarchy.LEVELS) else None


def fit(path, *, which: str = "latest", data_dir: str | None = None, batch_size: int | None = None) -> dict:
  """Fits the temperatures on the run's validation split and writes WORKDIR/calibration.json; returns its content.
  `path`: a workdir, a step directory or an open session.Session."""
  preds, _, partitions, split, run = queries.split_queries(path, which=which, data_dir=data_dir,
                                                           batch_size=batch_size)
  probs = {h: preds.extras[f"p_{h}"] for h in hierarchy.LEVELS if f"p_{h}" in preds.extras}
  cell_probs = np.asarray(hierarchy.cell_probabilities(probs, _hierarchy(partitions)), np.float32)
  base = Calibration.for_partition(partitions[-1])
  temperatures, rows = confidence.fit_temperatures(cell_probs, preds.pred_latlon, preds.true_latlon,
                                                   np.asarray(base.points))
  record = {"temperatures": dict(zip(("radius50", "radius90"), temperatures)), "fitted_on": split,
            "n": int(len(cell_probs)), "step": run.step,
            "params_fingerprint": run.fingerprint,
            "spread": "measured" if partitions[-1].spread_km is not None else "S2 cell extent",
            "grid": rows}
  best = {f"coverage_radius{int(q * 100)}": next(r[f"coverage_{q:g}"] for r in rows if r["temperature"] == t)
          for q, t in zip(confidence.QUANTILES, temperatures)}
  record.update({"validation_" + k: v for k, v in best.items()})
  if jax.process_index() == 0:
    (checkpoints.workdir_of(run.path) / FILE).write_text(json.dumps(record, indent=2))
  return record


def load(path, ckpt, partitions) -> Calibration:
  """The checkpoint's calibration (WORKDIR/calibration.json fitted for this step and these parameters), else the
  uncalibrated radii with a one-line notice. ckpt: a session.Session (or anything with its step and fingerprint)."""
  file = checkpoints.workdir_of(path) / FILE
  if file.exists():
    record = json.loads(file.read_text())
    if (record.get("step") == ckpt.step
        and record.get("params_fingerprint") == ckpt.fingerprint):
      t = record["temperatures"]
      return Calibration.for_partition(partitions[-1], (t["radius50"], t["radius90"]), calibrated=True)
    print(f"note: {file} was fitted for checkpoint step {record.get('step')}, not step {ckpt.step}: confidence "
          f"radii are not calibrated (refit: {PROG} --workdir ...)", file=sys.stderr)
  return Calibration.for_partition(partitions[-1])
