"""Leakage-aware evaluation: how much of a score is places (or photos) the training set already holds.

Two per-image values: the distance from the true location to the nearest training location (geo.nearest), and,
with a gallery, the highest similarity to a training image. From them, beside the usual table: the table on the
unseen-place subset (nearest training location farther than unseen_km) and the count of likely near-duplicates
(similarity above dup_sim) with the table without them.
"""
from __future__ import annotations

import numpy as np
import tqdm

from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.geo import metrics
from translocator_jax.geo.predictions import Predictions

UNSEEN_KM = 25.0
DUP_SIM = 0.95


def training_locations(info: registry.DatasetInfo, split: str = "train") -> np.ndarray:
  """float32 [N, 2] every location of a split (the images are not decoded)."""
  if info.tfds_dir is None:
    raise registry.DatasetMissingError(f"{info.name}: no built records to read the training locations from")
  source = sources.open_source(info.tfds_dir, split, decode=False)
  return np.stack([np.asarray(source[i][schema.LATLON], np.float32)
                   for i in tqdm.trange(len(source), desc=f"{info.name}/{split} locations", leave=False)])


def subset_tables(preds: Predictions, keep: np.ndarray) -> dict[str, dict[str, float] | None]:
  """method -> accuracy table over the images where keep is True (None when there are none)."""
  keep = np.asarray(keep, bool)
  if not keep.any():
    return {m: None for m in preds.methods()}
  return {m: metrics.accuracy_table(p[keep], preds.true_latlon[keep]) for m, p in preds.methods().items()}


def report(preds: Predictions, unseen_km: float = UNSEEN_KM, dup_sim: float = DUP_SIM) -> dict:
  """{'unseen': {n, tables}, 'deduplicated': {near_duplicates, tables}}, each present when its value is known."""
  out = {}
  if "nearest_train_km" in preds.extras:
    unseen = np.asarray(preds.extras["nearest_train_km"]) > unseen_km
    out["unseen"] = {"n": int(unseen.sum()), "km": float(unseen_km), "tables": subset_tables(preds, unseen)}
  if "max_gallery_similarity" in preds.extras:
    dup = np.asarray(preds.extras["max_gallery_similarity"]) > dup_sim
    out["deduplicated"] = {"near_duplicates": int(dup.sum()), "similarity": float(dup_sim),
                           "tables": subset_tables(preds, ~dup)}
  return out
