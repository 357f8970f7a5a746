"""The evaluation input pipeline: every example of this process's shard once, padded to whole batches (padding
rows masked), centre crop or five crops, left uint8 (photo and class map) for DeviceFinish in the evaluation step.
With tta='five_crop' image and seg get a crop axis after the batch axis: [B, 5, S, S, ...].
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import grain
import numpy as np

from translocator_jax import errors
from translocator_jax.data.pipeline import augment
from translocator_jax.data.pipeline import fields as fields_lib
from translocator_jax.data.records import schema

EVAL_CROP_FRACTION = 0.875  # the usual resize-to-S/0.875-then-crop-S of ImageNet evaluation


class _PaddedShard:
  """This shard's records, then copies of its first record (mask False, index -1) up to whole batches."""

  def __init__(self, source: Any, positions: np.ndarray, padded_len: int):
    self.source = source
    self.positions = positions
    self.padded_len = padded_len

  def __len__(self) -> int:
    return self.padded_len

  def __getitem__(self, j: int) -> tuple[bool, dict[str, Any]]:
    real = j < len(self.positions)
    pos = self.positions[j] if real else (self.positions[0] if len(self.positions) else 0)
    return real, self.source[int(pos)]


class EvalTransform(grain.transforms.Map):
  """Centre crop (resize the shorter side, crop the centre) or five crops, uint8; labels; padding flags."""

  def __init__(self, image_size: int, fields: fields_lib.Fields, tta: str, crop_fraction: float,
               image_ids: bool = False):
    self.image_size = image_size
    self.fields = fields
    self.tta = tta
    self.crop_fraction = crop_fraction
    self.image_ids = image_ids

  def map(self, element: tuple[bool, dict[str, Any]]) -> dict[str, np.ndarray]:
    real, ex = element
    image, seg = augment.eval_crops(*fields_lib.split_example(ex), self.image_size, self.tta, self.crop_fraction)
    out = {"image": image, "seg": seg}
    out.update(self.fields.labels(ex))
    if self.image_ids:
      value = ex.get(schema.IMAGE_ID, "") if real else ""
      out["image_id"] = np.str_(value.decode() if isinstance(value, bytes) else value)
    if not real:
      out["mask"] = np.bool_(False)
      out["index"] = np.int64(-1)
    return out


class EvalLoader:
  """Re-iterable padded batches of one shard; every shard yields the same number of batches."""

  def __init__(self, dataset: grain.MapDataset, num_batches: int, num_examples: int, shard_examples: int,
               worker_count: int, num_threads: int):
    self._dataset = dataset
    self.num_batches = num_batches
    self.num_examples = num_examples      # in the whole source
    self.shard_examples = shard_examples  # real examples of this shard
    self._worker_count = worker_count
    self._num_threads = num_threads

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iter_from(0)

  def iter_from(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches from `start_batch` on (a resumed gallery build skips the parts it has)."""
    ds = self._dataset[int(start_batch):].to_iter_dataset(grain.ReadOptions(num_threads=self._num_threads))
    if self._worker_count > 0:
      fields_lib.absl_flags_ready()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    return iter(ds)


def shard_positions(num_examples: int, shard_index: int, shard_count: int) -> np.ndarray:
  """The consecutive source positions of one shard (sizes differ by at most one)."""
  start = num_examples * shard_index // shard_count
  stop = num_examples * (shard_index + 1) // shard_count
  return np.arange(start, stop, dtype=np.int64)


def eval_loader(source: Any, *, batch_size: int, image_size: int, seg_input: str = "palette",
                palette: np.ndarray | None = None, tta: str = "center", shard_index: int | None = None,
                shard_count: int | None = None, scene_key: str = schema.SCENE_S3,
                crop_fraction: float = EVAL_CROP_FRACTION, worker_count: int = 0, num_threads: int = 4,
                image_ids: bool = False) -> EvalLoader:
  """Padded batches of this process's shard: every record once over all shards, mask False on padding.

  Args:
    tta: 'center' (one centre crop) or 'five_crop' (4 corners + centre, a crop axis after the batch axis).
    crop_fraction: side of each crop as a fraction of the shorter side (resize to S / crop_fraction, then crop
      S: the usual 0.875; 1.0 keeps the whole centred square).
    image_ids: add each record's image_id (text, '' on padding) to the batches (galleries name their images).
    Others as in train_loader; batch_size is per process.
  """
  fields_lib.check_seg_input(seg_input, palette)
  if tta not in augment.TTA_MODES:
    raise errors.ConfigError(f"config.eval.tta={tta!r}; expected one of {augment.TTA_MODES}")
  if not 0.0 < crop_fraction <= 1.0:
    raise errors.ConfigError(f"config.eval.crop_fraction={crop_fraction!r}: must be in (0, 1]")
  shard_index, shard_count = fields_lib.process_shard(shard_index, shard_count)
  n = len(source)
  positions = shard_positions(n, shard_index, shard_count)
  largest_shard = math.ceil(n / shard_count)
  num_batches = math.ceil(largest_shard / batch_size) if n else 0
  padded = _PaddedShard(source, positions, num_batches * batch_size)
  fields = fields_lib.Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  ds = (grain.MapDataset.source(padded)
        .map(EvalTransform(int(image_size), fields, tta, float(crop_fraction), image_ids=image_ids))
        .batch(int(batch_size), drop_remainder=False))
  return EvalLoader(ds, num_batches, n, len(positions), int(worker_count), int(num_threads))
