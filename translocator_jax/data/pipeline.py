"""grain input pipelines: training (shuffled, augmented, checkpointable) and evaluation (padded, every example once).

Batches are dicts of numpy arrays (the shared batch contract):
  image   float32 [B, S, S, 3] ImageNet-normalised
  seg     float32 [B, S, S, 3] palette colours normalised like the image (seg_input='palette'),
          or int32 [B, S, S] class indices (seg_input='classes')
  latlon  float32 [B, 2];  cells int32 [B, 3];  scene int32 [B] (-1 unknown)
  mask    bool [B] (False on padding);  index int64 [B] (position in the source, -1 on padding)
With tta='five_crop' image and seg get a crop axis after the batch axis: [B, 5, S, S, ...].

train_loader returns a grain.DataLoader: `it = iter(loader)`; `it.get_state()` / `it.set_state(state)` restore the
stream exactly (same batches, any worker_count); the train loop checkpoints `it` with grain's orbax handler
(grain.checkpoint.CheckpointHandler / CheckpointSave / CheckpointRestore).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from translocator_jax.data import augment
from translocator_jax.data import codecs
from translocator_jax.data import schema
from translocator_jax.data import sources

BATCH_KEYS = ("image", "seg", "latlon", "cells", "scene", "mask", "index")


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
  return int(shard_index), int(shard_count)


def _absl_flags_ready() -> None:
  """grain's worker processes read absl flags; outside an absl app nobody parses them (defaults are right)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_seg_input(seg_input: str, palette) -> None:
  if seg_input not in ("palette", "classes"):
    raise ValueError(f"seg_input must be 'palette' or 'classes', got {seg_input!r}")
  if seg_input == "palette" and palette is None:
    raise ValueError("seg_input='palette' needs the dataset's palette ([num_classes, 3] uint8)")


@dataclasses.dataclass
class _Fields:
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

  def __post_init__(self):
    self._palette_norm = None if self.palette is None else augment.normalize(np.asarray(self.palette, np.uint8))

  def seg(self, seg: np.ndarray) -> np.ndarray:
    return augment.seg_to_model_input(seg, self.seg_input, self._palette_norm)


def _split(ex: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  image = np.asarray(ex[schema.IMAGE])
  seg = np.asarray(ex[schema.SEGMENTATION])
  if seg.ndim == 3:
    seg = seg[..., 0]
  if image.shape[:2] != seg.shape:
    raise ValueError(f"record {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX))!r}: image {image.shape[:2]} and "
                     f"segmentation {seg.shape} differ in size")
  return image, seg


_EPOCHS_FOREVER = 1 << 24  # num_epochs=None: batch positions wrap after this many epochs


def _decode_record(ex: dict[str, Any]) -> dict[str, Any]:
  """A record with its image as uint8 [H, W, 3] and its map as a Pillow "L" image or uint8 [H, W] (bytes decoded)."""
  image, seg = ex[schema.IMAGE], ex[schema.SEGMENTATION]
  image = codecs.decode_rgb(image) if isinstance(image, bytes) else np.asarray(image)
  if isinstance(seg, bytes):
    seg = codecs.decode_gray(seg)
    seg_size = (seg.height, seg.width)
  else:
    seg = np.asarray(seg)
    seg = seg[..., 0] if seg.ndim == 3 else seg
    seg_size = seg.shape
  if image.shape[:2] != tuple(seg_size):
    raise ValueError(f"record {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX))!r}: image {image.shape[:2]} and "
                     f"segmentation {tuple(seg_size)} differ in size")
  return dict(ex, **{schema.IMAGE: image, schema.SEGMENTATION: seg})


class ShardBatches:
  """This shard's records, reshuffled every epoch, as a random-access source of whole batches (lists of records).

  Element k is batch k % per_epoch of epoch k // per_epoch: a permutation of the shard's positions seeded by
  (seed, epoch), cut into batch_size pieces (the remainder of each epoch is left out). One grain element per batch
  keeps grain's per-element cost (sampler, iterator state, stats: ~0.2 ms here) off every image, and grain's
  DataLoader still checkpoints the position exactly, for any worker count. Records are read and their JPEG / PNG
  decoded here, i.e. in grain's reader threads when there are any.
  """

  def __init__(self, source: Any, positions: np.ndarray, batch_size: int, seed: int, num_epochs: int | None):
    self.source = source
    self.positions = np.asarray(positions, np.int64)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.per_epoch = len(self.positions) // self.batch_size
    self._len = self.per_epoch * (num_epochs or _EPOCHS_FOREVER)
    self._order = None  # (epoch, permuted positions) of the last epoch read

  def __len__(self) -> int:
    return self._len

  def order(self, epoch: int) -> np.ndarray:
    cached = self._order
    if cached is None or cached[0] != epoch:
      perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.positions))
      cached = (epoch, self.positions[perm])
      self._order = cached  # one assignment: safe with several reader threads
    return cached[1]

  def __getitem__(self, k: int) -> list[dict[str, Any]]:
    epoch, j = divmod(int(k), self.per_epoch)
    keys = self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
    return [_decode_record(self.source[int(i)]) for i in keys]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_order"] = None
    return state

  def __repr__(self) -> str:
    return f"ShardBatches({self.source!r}, {len(self.positions)} records, batch_size={self.batch_size})"


class TrainTransform(grain.transforms.RandomMap):
  """A list of decoded records -> a training batch: per image a random resized crop + flip, the same geometry for
  photo and map; normalisation and palette colours once per batch, written straight into the batch arrays.
  """

  def __init__(self, image_size: int, fields: _Fields, scale: tuple[float, float], flip: bool,
               antialias: bool = True):
    self.image_size = image_size
    self.fields = fields
    self.scale = scale
    self.flip = flip
    self.antialias = antialias
    self._palette_lut = None if fields.palette is None else augment.palette_table(fields.palette)

  def random_map(self, records: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = self.image_size
    images = np.empty((len(records), size, size, 3), np.uint8)
    segs = np.empty((len(records), size, size), np.uint8)
    for k, ex in enumerate(records):
      image, seg = ex[schema.IMAGE], ex[schema.SEGMENTATION]
      box = augment.random_resized_crop_box(rng, image.shape[0], image.shape[1], scale=self.scale)
      flip = bool(self.flip and rng.random() < 0.5)
      images[k], segs[k] = augment.crop_resize(image, seg, box, size, flip=flip, antialias=self.antialias)
    out = {"image": augment.normalize_batch(images), "seg": self._seg(segs)}
    labels = [self.fields.labels(ex) for ex in records]
    out.update({key: np.stack([lab[key] for lab in labels]) for key in labels[0]})
    return out

  def _seg(self, segs: np.ndarray) -> np.ndarray:
    if self.fields.seg_input != "palette":
      return self.fields.seg(segs)
    if segs.size and int(segs.max()) >= len(self.fields.palette):
      raise ValueError(f"class {int(segs.max())} in a segmentation map is past the palette "
                       f"({len(self.fields.palette)} colours)")
    return augment.palette_lookup(segs, self._palette_lut)


def train_loader(source: Any, *, batch_size: int, image_size: int, seg_input: str = "palette",
                 palette: np.ndarray | None = None, seed: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0, num_epochs: int | None = None,
                 scene_key: str = schema.SCENE_S3, crop_scale: tuple[float, float] = (0.35, 1.0),
                 flip: bool = True, antialias: bool = True, num_threads: int = 4,
                 worker_buffer_size: int = 2) -> grain.DataLoader:
  """Shuffled, augmented, batched training examples of this process's shard (whole batches only).

  Every shard holds len(source) // shard_count consecutive records (so all processes run the same number of
  steps); each epoch visits them in a new order, in len(shard) // batch_size batches.

  Args:
    source: a random-access source of records (sources.open_source; an ArrayRecord source is read undecoded
      and decoded here with the lean decoders of `codecs`, the same pixels).
    batch_size: examples per batch of this process.
    image_size: S, the side of the model input.
    seg_input: 'palette' or 'classes' (config.model.seg_input).
    palette: [num_seg_classes, 3] uint8 colours (needed for 'palette').
    seed: shuffle and augmentation seed: the stream is a function of (seed, shard, position) only.
    shard_index, shard_count: this process's shard (default: jax.process_index(), jax.process_count()).
    worker_count: grain worker processes (0: in this process).
    num_epochs: None repeats forever.
    scene_key: which scene label feeds `scene` (schema.SCENE_S3 for a 3-way head).
    crop_scale: area range of the random resized crop.
    flip: random left-right mirror.
    antialias: resample crops that are downscaled with Pillow's antialiasing bilinear filter (as eval does);
      False warps them with plain bilinear interpolation (faster, aliased; upscaled crops are the same).
    num_threads: reader (and decoding) threads, in this process or in each worker.
    worker_buffer_size: batches each worker keeps ready.
  """
  _check_seg_input(seg_input, palette)
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  shard_len = len(source) // shard_count
  if shard_len < batch_size:
    raise ValueError(f"{source!r}: {len(source)} records cannot fill a batch of {batch_size} on each of "
                     f"{shard_count} shards")
  if getattr(source, "decode", False) and hasattr(source, "undecoded"):
    source = source.undecoded()  # e.g. sources.ArrayRecordSource: ShardBatches decodes, with the lean decoders
  positions = np.arange(shard_index * shard_len, (shard_index + 1) * shard_len, dtype=np.int64)
  batches = ShardBatches(source, positions, batch_size, seed, num_epochs)
  # Augmentation randomness: grain seeds element k's generator with sampler seed + k; shards get their own seeds.
  aug_seed = int(np.random.SeedSequence([int(seed), shard_index]).generate_state(1)[0] >> 1)
  sampler = grain.samplers.IndexSampler(num_records=len(batches), shuffle=False, num_epochs=1, seed=aug_seed)
  if worker_count:
    _absl_flags_ready()
  fields = _Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  operations = [TrainTransform(int(image_size), fields, tuple(crop_scale), bool(flip), bool(antialias))]
  return grain.DataLoader(data_source=batches, sampler=sampler, operations=operations, worker_count=worker_count,
                          worker_buffer_size=worker_buffer_size,
                          read_options=grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2))


# ------------------------------------------------------------------------------------------------ evaluation


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
  """Centre crop (resize the shorter side, crop the centre) or five crops; labels; padding flags."""

  def __init__(self, image_size: int, fields: _Fields, tta: str, crop_fraction: float):
    self.image_size = image_size
    self.fields = fields
    self.tta = tta
    self.crop_fraction = crop_fraction

  def map(self, element: tuple[bool, dict[str, Any]]) -> dict[str, np.ndarray]:
    real, ex = element
    image, seg = _split(ex)
    h, w = image.shape[:2]
    if self.tta == "five_crop":
      boxes = augment.five_crop_boxes(h, w, self.crop_fraction)
      crops = [augment.resample(image, seg, b, self.image_size) for b in boxes]
      out = {"image": np.stack([augment.normalize(c[0]) for c in crops]),
             "seg": np.stack([self.fields.seg(c[1]) for c in crops])}
    else:
      img, sg = augment.resample(image, seg, augment.center_box(h, w, self.crop_fraction), self.image_size)
      out = {"image": augment.normalize(img), "seg": self.fields.seg(sg)}
    out.update(self.fields.labels(ex))
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
    ds = self._dataset.to_iter_dataset(grain.ReadOptions(num_threads=self._num_threads))
    if self._worker_count > 0:
      _absl_flags_ready()
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
                crop_fraction: float = 0.875, worker_count: int = 0, num_threads: int = 4) -> EvalLoader:
  """Padded batches of this process's shard: every record once over all shards, mask False on padding.

  Args:
    tta: 'center' (one centre crop) or 'five_crop' (4 corners + centre, a crop axis after the batch axis).
    crop_fraction: side of each crop as a fraction of the shorter side (resize to S / crop_fraction, then crop
      S: the usual 0.875; 1.0 keeps the whole centred square).
    Others as in train_loader; batch_size is per process.
  """
  _check_seg_input(seg_input, palette)
  if tta not in ("center", "five_crop"):
    raise ValueError(f"tta must be 'center' or 'five_crop', got {tta!r}")
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  n = len(source)
  positions = shard_positions(n, shard_index, shard_count)
  largest_shard = math.ceil(n / shard_count)
  num_batches = math.ceil(largest_shard / batch_size) if n else 0
  padded = _PaddedShard(source, positions, num_batches * batch_size)
  fields = _Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  ds = (grain.MapDataset.source(padded)
        .map(EvalTransform(int(image_size), fields, tta, float(crop_fraction)))
        .batch(int(batch_size), drop_remainder=False))
  return EvalLoader(ds, num_batches, n, len(positions), int(worker_count), int(num_threads))


def stack_batches(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Concatenates batches along the batch axis (tests, small evaluations)."""
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
