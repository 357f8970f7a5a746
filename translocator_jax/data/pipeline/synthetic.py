"""Synthetic data for tests: random in-memory examples with random labels for every head of a config.

Every process cuts its rows out of the same global batch, so runs on any number of processes and devices see
identical data.
"""
from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np

from translocator_jax.data.records import schema


class SyntheticIterator:
  """A deterministic stream of random examples: the global batch of step t is a function of (seed, t).

  State is the number of batches served (grain-checkpoint compatible: get_state() -> bytes).
  """

  def __init__(self, config: ml_collections.ConfigDict, global_batch: int, process_index: int = 0,
               process_count: int = 1):
    self.num_examples = config.data.synthetic.num_examples
    self.seed = config.data.synthetic.seed
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.pool = make_synthetic_examples(config, self.num_examples, self.seed)
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    start = self.position * self.global_batch
    pos = np.arange(start, start + self.global_batch)[self.offset:self.offset + self.local_batch]
    idx = np.empty_like(pos)
    for epoch in np.unique(pos // self.num_examples):
      sel = pos // self.num_examples == epoch
      perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)
      idx[sel] = perm[pos[sel] % self.num_examples]
    self.position += 1
    batch = {k: v[idx] for k, v in self.pool.items()}
    batch["index"] = idx.astype(np.int64)
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"position": self.position}).encode()

  def set_state(self, state: bytes) -> None:
    self.position = int(json.loads(state)["position"])

  def start_prefetch(self) -> None:
    pass


def make_synthetic_examples(config: ml_collections.ConfigDict, n: int, seed: int) -> dict[str, np.ndarray]:
  """n random examples with random labels for every head of config.model.heads (some scenes unknown, -1)."""
  rng = np.random.default_rng(seed)
  s = config.model.image_size
  # A head the model lacks still gets labels (its loss is never computed): 1 class for a partition, 3 scenes.
  heads = {**{p: 1 for p in schema.PARTITION_NAMES}, "scene": 3, **config.model.heads}
  cells = np.stack([rng.integers(0, heads[p], n) for p in schema.PARTITION_NAMES], 1).astype(np.int32)
  scene = rng.integers(0, heads["scene"], n).astype(np.int32)
  scene[rng.random(n) < 0.125] = schema.UNKNOWN
  if config.model.seg_input == "classes":
    seg = rng.integers(0, config.model.num_seg_classes, (n, s, s)).astype(np.int32)
  else:
    seg = rng.standard_normal((n, s, s, 3)).astype(np.float32)
  latlon = np.stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)], 1).astype(np.float32)
  return {"image": rng.standard_normal((n, s, s, 3)).astype(np.float32), "seg": seg, "cells": cells,
          "scene": scene, "latlon": latlon, "mask": np.ones(n, bool)}


def synthetic_eval_batches(ex: dict[str, np.ndarray], batch_size: int):
  n = len(ex["image"])
  per = batch_size // jax.process_count()
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[jax.process_index() * per:(jax.process_index() + 1) * per]
    mask = idx < n
    idx = np.where(mask, idx, 0)
    batch = {k: v[idx] for k, v in ex.items()}
    batch["mask"] = mask
    batch["index"] = idx.astype(np.int64)
    yield batch
