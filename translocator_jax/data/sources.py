"""Random-access sources over built TFDS directories (ArrayRecord), readable without TensorFlow.

`open_source(dataset_dir, split)` wraps `tfds.builder_from_directory(dir).as_data_source(split)`: record i is the
decoded example dict of the schema (image uint8 [H, W, 3], segmentation uint8 [H, W, 1], ...) plus
`index` = i. The TFDS source is opened lazily in each process, so the wrapper pickles as two strings (grain
worker processes get a copy).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

INDEX = "index"


class TfdsSource:
  """grain RandomAccessDataSource over one split of a TFDS directory."""

  def __init__(self, dataset_dir: str | os.PathLike, split: str, *, decode: bool = True):
    self.dataset_dir = os.fspath(dataset_dir)
    self.split = split
    self.decode = decode
    if not (pathlib.Path(self.dataset_dir) / "dataset_info.json").exists():
      raise FileNotFoundError(f"{self.dataset_dir} is not a built TFDS dataset (no dataset_info.json)")
    self._source = None
    self._len = len(self._open())

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      builder = tfds.builder_from_directory(self.dataset_dir)
      if self.split not in builder.info.splits:
        raise KeyError(f"{self.dataset_dir} has no split {self.split!r}; it has {sorted(builder.info.splits)}")
      decoders = None
      if not self.decode:  # raw JPEG / PNG bytes (benchmarks, custom decoders)
        from translocator_jax.data import schema  # pylint: disable=g-import-not-at-top
        decoders = {schema.IMAGE: tfds.decode.SkipDecoding(), schema.SEGMENTATION: tfds.decode.SkipDecoding()}
      self._source = builder.as_data_source(self.split, decoders=decoders)
    return self._source

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < self._len:
      raise IndexError(f"index {i} out of range for {self.dataset_dir} split {self.split!r} ({self._len} records)")
    example = dict(self._open()[i])
    example[INDEX] = np.int64(i)
    return example

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __repr__(self) -> str:
    return f"TfdsSource({self.dataset_dir!r}, split={self.split!r}, n={self._len})"


def open_source(dataset_dir: str | os.PathLike, split: str, *, decode: bool = True) -> TfdsSource:
  """Random-access source of decoded example dicts (plus 'index') of one split of a built TFDS dataset."""
  return TfdsSource(dataset_dir, split, decode=decode)
