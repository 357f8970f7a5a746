"""A config's batches: this process's training iterator and evaluation batches of a registered dataset.

Both hand over uint8 photos and class maps; the jitted train step and infer.inference.make_forward finish them on
the device (device_finish.py). Synthetic data (tests) comes already finished.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from translocator_jax.data import registry
from translocator_jax.data.pipeline import evaluation, synthetic, training
from translocator_jax.data.records import manifest, schema, sources


def check_records(info: registry.DatasetInfo, split: str) -> None:
  """Refuses (manifest.DamagedShardError, one line) a split whose shards differ from the build's manifest: what
  open_source does, for a run to call before it builds its model (training, its validation split)."""
  if info.tfds_dir is not None:
    manifest.check_split(info.tfds_dir, split)


def train_iterator(config: ml_collections.ConfigDict, info: registry.DatasetInfo,
                   global_batch: int) -> Iterator[Any]:
  """This process's iterator over its shard of the training set (get_state / set_state for checkpoints)."""
  if info.name == "synthetic":
    return synthetic.SyntheticIterator(config, global_batch, jax.process_index(), jax.process_count())
  registry.require_maps(config, info)
  source = sources.open_source(info.tfds_dir, config.data.train_split)
  loader = training.train_loader(
      source, batch_size=global_batch // jax.process_count(), image_size=config.model.image_size,
      seg_input=config.model.seg_input, palette=info.palette, seed=config.data.shuffle_seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(), worker_count=config.data.worker_count,
      augmentation=config.data.augmentation)
  return iter(loader)


def record_locator(config: ml_collections.ConfigDict, info: registry.DatasetInfo
                   ) -> Callable[[int], tuple[str | None, int | None]]:
  """index -> (shard file, position in it) of a training record, for naming the ones that could not be read (the
  split's shard list is read on first use: a run without a bad record never needs it)."""
  opened = []

  def locate(index: int) -> tuple[str | None, int | None]:
    if info.tfds_dir is None:
      return None, None
    if not opened:
      opened.append(sources.open_source(info.tfds_dir, config.data.train_split, decode=False))
    return opened[0].locate(index) if hasattr(opened[0], "locate") else (None, None)

  return locate


def train_batch_spec(config: ml_collections.ConfigDict, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch train_iterator's loader yields, as shapes and dtypes, for the keys the
  train step reads: uint8 photo [B, S, S, 3] and class map [B, S, S] (a crop axis of 10 after the size with
  augmentation='authors_ten_crop'), cells int32 [B, 3], scene int32 [B], latlon float32 [B, 2], mask bool [B].
  What an ahead-of-time compile lowers the step with."""
  s = config.model.image_size
  crops = (10,) if config.data.augmentation == "authors_ten_crop" else ()
  b = (int(global_batch),)
  spec = {"image": (b + crops + (s, s, 3), np.uint8), "seg": (b + crops + (s, s), np.uint8),
          "cells": (b + (len(schema.PARTITION_NAMES),), np.int32), "scene": (b, np.int32),
          "latlon": (b + (2,), np.float32), "mask": (b, np.bool_)}
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def eval_batches(config: ml_collections.ConfigDict, info: registry.DatasetInfo, split: str, batch_size: int,
                 tta: str = "center", image_ids: bool = False) -> tuple[Any, int]:
  """(padded batch iterable for this process, number of examples in the split); crops of
  config.eval.crop_fraction, as Predictor takes them; image_ids adds each record's id to the batches."""
  if info.name == "synthetic":
    syn = config.data.synthetic
    ex = synthetic.make_synthetic_examples(config, syn.num_examples, syn.seed)
    return synthetic.synthetic_eval_batches(ex, batch_size), len(ex["image"])
  registry.require_maps(config, info)  # also for a training set's info read without its records (evaluation)
  source = sources.open_source(info.tfds_dir, split)
  loader = evaluation.eval_loader(
      source, batch_size=batch_size // jax.process_count(), image_size=config.model.image_size,
      seg_input=config.model.seg_input, palette=info.palette, tta=tta,
      crop_fraction=config.eval.crop_fraction, shard_index=jax.process_index(),
      shard_count=jax.process_count(), image_ids=image_ids)
  return loader, len(source)
