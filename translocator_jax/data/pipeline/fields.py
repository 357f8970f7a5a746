"""What both input pipelines share: the batch contract, a record's labels as batch fields, splitting a record into
photo and class map, and the process's shard of a dataset.

Batches are dicts of numpy arrays (the shared batch contract):
  image   float32 [B, S, S, 3] ImageNet-normalised
  seg     float32 [B, S, S, 3] palette colours normalised like the image (seg_input='palette'),
          or int32 [B, S, S] class indices (seg_input='classes')
  latlon  float32 [B, 2];  cells int32 [B, 3];  scene int32 [B] (-1 unknown)
  mask    bool [B] (False on padding);  index int64 [B] (position in the source, -1 on padding)
  error   str [B], training batches only: '' for a good record; for a record that could not be read or decoded,
          why (its row is zeros with mask False, so the step skips it; the trainer names it, train/bad_records.py)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from translocator_jax import errors
from translocator_jax.data.records import codecs
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources

BATCH_KEYS = ("image", "seg", "latlon", "cells", "scene", "mask", "index")
# What one damaged record raises while it is read or decoded: it is skipped in training, never in evaluation.
RECORD_ERRORS = (sources.BadRecordError, *sources.READ_ERRORS, *codecs.DECODE_ERRORS)


def process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
  return int(shard_index), int(shard_count)


def absl_flags_ready() -> None:
  """grain's worker processes read absl flags; outside an absl app nobody parses them (defaults are right)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def check_seg_input(seg_input: str, palette) -> None:
  if seg_input not in ("palette", "classes"):
    raise errors.ConfigError(f"config.model.seg_input={seg_input!r}; expected 'palette' or 'classes'")
  if seg_input == "palette" and palette is None:
    raise ValueError("seg_input='palette' needs the dataset's palette ([num_classes, 3] uint8)")


@dataclasses.dataclass
class Fields:
  """How to turn a decoded record's labels into batch fields (shared by both pipelines)."""
  seg_input: str
  palette: np.ndarray | None
  scene_key: str

  def labels(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
    scene = ex.get(self.scene_key, schema.UNKNOWN)
    return {
        "latlon": np.asarray(ex[schema.LATLON], np.float32),
        "cells": np.asarray(ex[schema.CELLS], np.int32),
        "scene": np.int32(scene),
        "mask": np.bool_(True),
        "index": np.int64(ex[sources.INDEX]),
    }

  def batch_labels(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """labels() of a list of records, stacked (one array per field)."""
    return {
        "latlon": np.array([ex[schema.LATLON] for ex in records], np.float32).reshape(-1, 2),
        "cells": np.array([ex[schema.CELLS] for ex in records], np.int32).reshape(len(records), -1),
        "scene": np.array([ex.get(self.scene_key, schema.UNKNOWN) for ex in records], np.int32),
        "mask": np.ones(len(records), bool),
        "index": np.array([ex[sources.INDEX] for ex in records], np.int64),
    }

  def check_classes(self, segs: np.ndarray, records: list[dict[str, Any]]) -> None:
    """Raises naming the records whose uint8 class maps [B, H, W] hold a class past the palette."""
    if self.seg_input != "palette" or not segs.size or int(segs.max()) < len(self.palette):
      return
    worst = segs.reshape(len(segs), -1).max(axis=1)
    bad = {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX)): int(m) for ex, m in zip(records, worst)
           if m >= len(self.palette)}
    raise errors.DataError(f"segmentation maps hold classes past the palette ({len(self.palette)} colours): {bad} "
                           "(record: its largest class)")


def zeros_if_no_map(seg: Any, hw: tuple[int, int]) -> Any:
  """The map of a record without one (schema.NO_MAP, a --no-seg set): zeros the size of the photo, so RGB-only
  models (which ignore the map; registry.require_maps keeps two-stream models off such sets) get the usual batch."""
  return np.zeros(hw, np.uint8) if isinstance(seg, bytes) and seg == schema.NO_MAP else seg


def split_example(ex: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  image = np.asarray(ex[schema.IMAGE])
  seg = np.asarray(zeros_if_no_map(ex[schema.SEGMENTATION], image.shape[:2]))
  if seg.ndim == 3:
    seg = seg[..., 0]
  if image.shape[:2] != seg.shape:
    raise errors.DataError(f"record {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX))!r}: image {image.shape[:2]} "
                           f"and segmentation {seg.shape} differ in size")
  return image, seg
