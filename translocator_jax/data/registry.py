"""What the trainer and evaluator read: per-process batch iterators, partitions and palettes, by dataset name.

Names: 'earth_patches' (built on demand by data.earth_patches.ensure_built), 'mp16', 'im2gps', 'im2gps3k',
'yfcc4k', 'yfcc26k' (TFDS dirs under config.data.data_dir built by data_prep), and 'synthetic' (random
in-memory examples for tests: every process cuts its rows out of the same global batch, so runs on any number
of processes and devices see identical data).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from translocator_jax import paths
from translocator_jax.data.records import schema

BENCHMARKS = ("im2gps", "im2gps3k", "yfcc4k", "yfcc26k")
BUILD_COMMANDS = {
    "mp16": ("python -m data_prep.build_mp16 --csv mp16_places365.csv --images mp16_rgb_images.tgz "
             "--segmentations mp16_seg_images_PNG.tgz --output DATA_DIR/mp16 --workers 16"),
    **{name: (f"python -m data_prep.build_benchmark --name {name} --images {name}_rgb_images.tar.gz "
              f"--segmentations {name}_seg_images_PNG.tar.gz --output DATA_DIR/{name}")
       for name in ("im2gps", "im2gps3k", "yfcc26k")},
    "yfcc4k": ("python -m data_prep.build_benchmark --name yfcc4k --csv yfcc4k.csv --images "
               "yfcc4k_rgb_images.tar.gz --segmentations yfcc4k_seg_images_PNG.tar.gz --output DATA_DIR/yfcc4k"),
}


class DatasetMissingError(FileNotFoundError):
  """A dataset the config names is not on disk; the message says which command builds it."""


@dataclasses.dataclass
class DatasetInfo:
  name: str
  tfds_dir: str | None             # the built TFDS dir (None for synthetic)
  partition_paths: tuple[str, ...] | None
  palette: np.ndarray | None        # [K, 3] uint8 (seg_input='palette')
  num_seg_classes: int


# ------------------------------------------------------------------------------------------------ synthetic


class SyntheticIterator:
  """A deterministic stream of random examples: the global batch of step t is a function of (seed, t).

  State is the number of batches served (grain-checkpoint compatible: get_state() -> bytes).
  """

  def __init__(self, config: ml_collections.ConfigDict, global_batch: int, process_index: int = 0,
               process_count: int = 1):
    syn = config.data.get("synthetic", ml_collections.ConfigDict())
    self.num_examples = int(syn.get("num_examples", 32))
    self.seed = int(syn.get("seed", 0))
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
  s = int(config.model.image_size)
  heads = config.model.heads
  cells = np.stack([rng.integers(0, heads.get(p, 1), n) for p in schema.PARTITION_NAMES], 1).astype(np.int32)
  scene = rng.integers(0, heads.get("scene", 3), n).astype(np.int32)
  scene[rng.random(n) < 0.125] = schema.UNKNOWN
  if config.model.get("seg_input", "palette") == "classes":
    seg = rng.integers(0, int(config.model.num_seg_classes), (n, s, s)).astype(np.int32)
  else:
    seg = rng.standard_normal((n, s, s, 3)).astype(np.float32)
  latlon = np.stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)], 1).astype(np.float32)
  return {"image": rng.standard_normal((n, s, s, 3)).astype(np.float32), "seg": seg, "cells": cells,
          "scene": scene, "latlon": latlon, "mask": np.ones(n, bool)}


# ------------------------------------------------------------------------------------------------ real data


def ade20k_palette() -> np.ndarray:
  """[150, 3] uint8 colours of the colourised ADE20K-150 segmentation maps."""
  from translocator_jax.data.records import palette  # pylint: disable=g-import-not-at-top
  return palette.palette()


def find_tfds_dir(data_dir: str | pathlib.Path | None, name: str) -> pathlib.Path:
  """The built TFDS directory (the one holding dataset_info.json) of `name` under `data_dir`."""
  root = pathlib.Path(data_dir or pathlib.Path("~/tensorflow_datasets").expanduser())
  base = root / name
  if (base / "dataset_info.json").exists():
    return base
  versions = sorted(base.glob("*/dataset_info.json")) if base.is_dir() else []
  if versions:
    return versions[-1].parent  # the newest version
  cmd = BUILD_COMMANDS.get(name, f"the data_prep builder of {name!r}").replace("DATA_DIR", str(root))
  raise DatasetMissingError(f"dataset {name!r} not found under {root} (looked for {root / name}/<version>/"
                            f"dataset_info.json). Build it with: {cmd}")


def dataset_info(config: ml_collections.ConfigDict, name: str, *, need_records: bool = True) -> DatasetInfo:
  """Where `name` lives, its partitions (coarse -> fine) and segmentation palette.

  need_records=False: the partitions and palette alone (tfds_dir None when the dataset is not built), which is
  all evaluation and prediction need of the training set.
  """
  if name == "synthetic":
    return DatasetInfo(name, None, None, None, int(config.model.get("num_seg_classes", 150)))
  if name == "earth_patches":
    from translocator_jax.data.earth_patches import dataset as earth_patches  # pylint: disable=g-import-not-at-top
    opts = dict(config.data.get("earth_patches", {}) or {})
    info = earth_patches.ensure_built(data_dir=config.data.get("data_dir"), **opts)
    return DatasetInfo(name, str(info.data_dir), tuple(str(p) for p in info.partition_paths),
                       np.asarray(info.palette, np.uint8), int(info.num_seg_classes))
  try:
    tfds_dir = str(find_tfds_dir(config.data.get("data_dir"), name))
  except DatasetMissingError:
    if need_records:
      raise
    tfds_dir = None
  part_dir = pathlib.Path(config.data.partitions_dir)
  if not part_dir.is_absolute() and not part_dir.exists():
    part_dir = paths.shared_data_dir() / "partitions"
  parts = tuple(str(part_dir / f) for f in config.data.partition_files)
  return DatasetInfo(name, tfds_dir, parts, ade20k_palette(), 150)


def load_partitions(info: DatasetInfo) -> list[Any] | None:
  if not info.partition_paths:
    return None
  from translocator_jax.geo import cells  # pylint: disable=g-import-not-at-top
  return [cells.load_partition_csv(p) for p in info.partition_paths]


def train_iterator(config: ml_collections.ConfigDict, info: DatasetInfo, global_batch: int) -> Iterator[Any]:
  """This process's iterator over its shard of the training set (get_state / set_state for checkpoints)."""
  if info.name == "synthetic":
    return SyntheticIterator(config, global_batch, jax.process_index(), jax.process_count())
  from translocator_jax.data.pipeline import loaders as pipeline  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.records import sources
  source = sources.open_source(info.tfds_dir, config.data.get("train_split", "train"))
  loader = pipeline.train_loader(
      source, batch_size=global_batch // jax.process_count(), image_size=int(config.model.image_size),
      seg_input=config.model.get("seg_input", "palette"), palette=info.palette,
      seed=int(config.data.get("shuffle_seed", 0)), shard_index=jax.process_index(),
      shard_count=jax.process_count(), worker_count=int(config.data.get("worker_count", 0)),
      finish="device")  # uint8 batches: the train step normalises and looks up the palette (step.py)
  return iter(loader)


def eval_batches(config: ml_collections.ConfigDict, info: DatasetInfo, split: str, batch_size: int,
                 tta: str = "center") -> tuple[Any, int]:
  """(padded batch iterable for this process, number of examples in the split)."""
  if info.name == "synthetic":
    ex = make_synthetic_examples(config, int(config.data.get("synthetic", {}).get("num_examples", 32)),
                                 int(config.data.get("synthetic", {}).get("seed", 0)))
    return _synthetic_eval_batches(ex, batch_size), len(ex["image"])
  from translocator_jax.data.pipeline import loaders as pipeline  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.records import sources
  source = sources.open_source(info.tfds_dir, split)
  loader = pipeline.eval_loader(
      source, batch_size=batch_size // jax.process_count(), image_size=int(config.model.image_size),
      seg_input=config.model.get("seg_input", "palette"), palette=info.palette, tta=tta,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      finish="device")  # uint8 crops: eval_model.make_forward(model, palette) finishes them
  return loader, len(source)


def _synthetic_eval_batches(ex: dict[str, np.ndarray], batch_size: int):
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
