"""grain input pipelines: training (shuffled, augmented, checkpointable) and evaluation (padded, every example once).

Batches are dicts of numpy arrays (the shared batch contract):
  image   float32 [B, S, S, 3] ImageNet-normalised
  seg     float32 [B, S, S, 3] palette colours normalised like the image (seg_input='palette'),
          or int32 [B, S, S] class indices (seg_input='classes')
  latlon  float32 [B, 2];  cells int32 [B, 3];  scene int32 [B] (-1 unknown)
  mask    bool [B] (False on padding);  index int64 [B] (position in the source, -1 on padding)
  error   str [B], training batches only: '' for a good record; for a record that could not be read or decoded,
          why (its row is zeros with mask False, so the step skips it; the trainer names it, train/bad_records.py)
train_loader(finish='device'), what the trainer uses, leaves image uint8 [B, S, S, 3] and seg uint8 [B, S, S] class
indices, which data.device_finish.DeviceFinish turns into the above inside the jitted step.
With tta='five_crop' image and seg get a crop axis after the batch axis: [B, 5, S, S, ...].

train_loader returns a TrainLoader over a grain.DataLoader: `it = iter(loader)`; `it.get_state()` /
`it.set_state(state)` (the DataLoader iterator's) restore the stream exactly (same batches; grain requires the
same worker_count); the train loop checkpoints `it` with grain's orbax handler
(grain.checkpoint.CheckpointHandler / CheckpointSave / CheckpointRestore).

Training speed (benchmarks/input_pipeline.py): a grain element is a whole batch (TrainBatches), so grain's
per-element cost is paid once per batch; records are read undecoded and decoded by `codecs` (no Python-level header
parsing), the crop box is drawn before decoding (the map is inflated only down to the box); photos go through
OpenCV's warp where that equals Pillow's filter (upscaled boxes) and Pillow's antialiasing resize elsewhere; the
float32 arrays are made once per batch by table lookups (bit-exact with `augment.normalize`), on the host or, with
finish='device', inside the train step (fewer bytes to the device and no host time on it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from translocator_jax import errors
from translocator_jax.data.pipeline import augment
from translocator_jax.data.records import codecs
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources

BATCH_KEYS = ("image", "seg", "latlon", "cells", "scene", "mask", "index")
# What one damaged record raises while it is read or decoded: it is skipped in training, never in evaluation.
RECORD_ERRORS = (sources.BadRecordError, *sources.READ_ERRORS, *codecs.DECODE_ERRORS)
FINISH_PLACES = ("auto", "main", "workers", "device")
EVAL_CROP_FRACTION = 0.875  # the usual resize-to-S/0.875-then-crop-S of ImageNet evaluation


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
    raise errors.ConfigError(f"config.model.seg_input={seg_input!r}; expected 'palette' or 'classes'")
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

  def batch_labels(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """labels() of a list of records, stacked (one array per field)."""
    return {
        "latlon": np.array([ex[schema.LATLON] for ex in records], np.float32).reshape(-1, 2),
        "cells": np.array([ex[schema.CELLS] for ex in records], np.int32).reshape(len(records), -1),
        "scene": np.array([ex.get(self.scene_key, schema.UNKNOWN) for ex in records], np.int32),
        "mask": np.ones(len(records), bool),
        "index": np.array([ex[sources.INDEX] for ex in records], np.int64),
    }

  def __post_init__(self):
    self._palette_norm = None if self.palette is None else augment.normalize(np.asarray(self.palette, np.uint8))

  def seg(self, seg: np.ndarray) -> np.ndarray:
    return augment.seg_to_model_input(seg, self.seg_input, self._palette_norm)

  def check_classes(self, segs: np.ndarray, records: list[dict[str, Any]]) -> None:
    """Raises naming the records whose uint8 class maps [B, H, W] hold a class past the palette."""
    if self.seg_input != "palette" or not segs.size or int(segs.max()) < len(self.palette):
      return
    worst = segs.reshape(len(segs), -1).max(axis=1)
    bad = {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX)): int(m) for ex, m in zip(records, worst)
           if m >= len(self.palette)}
    raise errors.DataError(f"segmentation maps hold classes past the palette ({len(self.palette)} colours): {bad} "
                           "(record: its largest class)")


def _zeros_if_no_map(seg: Any, hw: tuple[int, int]) -> Any:
  """The map of a record without one (schema.NO_MAP, a --no-seg set): zeros the size of the photo, so RGB-only
  models (which ignore the map; registry.require_maps keeps two-stream models off such sets) get the usual batch."""
  return np.zeros(hw, np.uint8) if isinstance(seg, bytes) and seg == schema.NO_MAP else seg


def _split(ex: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  image = np.asarray(ex[schema.IMAGE])
  seg = np.asarray(_zeros_if_no_map(ex[schema.SEGMENTATION], image.shape[:2]))
  if seg.ndim == 3:
    seg = seg[..., 0]
  if image.shape[:2] != seg.shape:
    raise errors.DataError(f"record {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX))!r}: image {image.shape[:2]} "
                           f"and segmentation {seg.shape} differ in size")
  return image, seg


_EPOCHS_FOREVER = 1 << 24  # num_epochs=None: batch positions wrap after this many epochs
_EMPTY_PREPARED = (np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8), (1, 1))


def _unreadable(index: int) -> dict[str, Any]:
  """A record that could not be read: a 1-pixel blank with no labels, in its row (masked out)."""
  return {schema.IMAGE: _EMPTY_PREPARED[0], schema.SEGMENTATION: _EMPTY_PREPARED[1][..., None],
          schema.LATLON: np.zeros(2, np.float32), schema.CELLS: np.full(schema.NUM_PARTITIONS, schema.UNKNOWN),
          sources.INDEX: np.int64(index)}


def _reason(e: BaseException) -> str:
  """One line: why a record was skipped (where it is, the trainer says: it has the source's shard list)."""
  if isinstance(e, sources.BadRecordError):
    return f"{e.what}: {e.reason}"
  return f"cannot be decoded: {sources.error_text(e)}"


class TrainAugment:
  """Records -> random resized crops + flips, the same geometry for photo and map, written into uint8 arrays.

  Takes records with decoded arrays or with the encoded JPEG / PNG bytes: the photo's size comes from its header,
  so the crop box is drawn before decoding and the decoder picked for the resize (an array for OpenCV's warp, a
  Pillow image for Pillow's resize), and the map is decoded only down to the box's last row.
  """

  def __init__(self, image_size: int, scale: tuple[float, float], flip: bool, antialias: bool):
    self.image_size = int(image_size)
    self.scale = tuple(scale)
    self.flip = bool(flip)
    self.antialias = bool(antialias)

  @staticmethod
  def prepare(ex: dict[str, Any]) -> tuple[Any, Any, tuple[int, int]]:
    """(photo, map, (height, width)): arrays, or bytes left for `apply` to decode when their size is in a header."""
    image, seg = ex[schema.IMAGE], ex[schema.SEGMENTATION]
    hw = codecs.image_size(image) if isinstance(image, bytes) else None
    if hw is None:
      image = codecs.decode_rgb(image) if isinstance(image, bytes) else np.asarray(image)
      hw = image.shape[:2]
    seg = _zeros_if_no_map(seg, tuple(hw))
    seg_hw = codecs.image_size(seg) if isinstance(seg, bytes) else None
    if seg_hw is None:
      if isinstance(seg, bytes):
        seg = codecs.decode_gray(seg)
        seg_hw = (seg.height, seg.width)
      else:
        seg = np.asarray(seg)
        seg = seg[..., 0] if seg.ndim == 3 else seg
        seg_hw = seg.shape
    if tuple(hw) != tuple(seg_hw):
      raise errors.DataError(f"record {ex.get(schema.IMAGE_ID, ex.get(sources.INDEX))!r}: image {tuple(hw)} and "
                             f"segmentation {tuple(seg_hw)} differ in size")
    return image, seg, tuple(hw)

  def apply(self, image: Any, seg: Any, box: augment.Box, flip: bool, image_out: np.ndarray,
            seg_out: np.ndarray) -> None:
    if isinstance(image, bytes):
      image = (codecs.decode_rgb(image) if augment.warps(box, self.image_size, self.antialias)
               else codecs.decode_rgb_pil(image))
    if isinstance(seg, bytes):  # nearest neighbour reads rows < ceil(box bottom) only
      seg = codecs.decode_gray(seg, rows=math.ceil(box[3]))
    augment.crop_resize(image, seg, box, self.image_size, flip=flip, antialias=self.antialias,
                        out=(image_out, seg_out))

  def __call__(self, records: list[dict[str, Any]], rng: np.random.Generator, images_out: np.ndarray,
               segs_out: np.ndarray) -> dict[int, BaseException]:
    """Writes the crops; returns {row: error} of the records that could not be decoded (their rows zeros)."""
    failed, prepared = {}, []
    for n, ex in enumerate(records):
      try:
        prepared.append(self.prepare(ex))
      except RECORD_ERRORS as e:
        failed[n] = e
        prepared.append(_EMPTY_PREPARED)  # still drawn a box: the other rows' draws stay as in a clean batch
    hws = np.array([p[2] for p in prepared], np.float64).reshape(-1, 2)
    boxes = augment.random_resized_crop_boxes(rng, hws[:, 0], hws[:, 1], scale=self.scale)
    flips = rng.random(len(records)) < 0.5 if self.flip else np.zeros(len(records), bool)
    for n, (image, seg, _) in enumerate(prepared):
      if n not in failed:
        try:
          self.apply(image, seg, tuple(boxes[n].tolist()), bool(flips[n]), images_out[n], segs_out[n])
          continue
        except RECORD_ERRORS as e:
          failed[n] = e
      images_out[n], segs_out[n] = 0, 0
    return failed


class AuthorsTenCrop:
  """The authors' training augmentation (augment.authors_ten_crops): [B, 10, S, S, 3] photos, [B, 10, S, S] maps."""
  crops = 10

  def __init__(self, image_size: int):
    self.image_size = int(image_size)

  def __call__(self, records: list[dict[str, Any]], rng: np.random.Generator, images_out: np.ndarray,
               segs_out: np.ndarray) -> dict[int, BaseException]:
    """Writes the crops; returns {row: error} of the records that could not be decoded (their rows zeros)."""
    failed = {}
    for n, ex in enumerate(records):
      try:
        image, seg = ex[schema.IMAGE], ex[schema.SEGMENTATION]
        image = codecs.decode_rgb(image) if isinstance(image, bytes) else np.asarray(image)
        seg = _zeros_if_no_map(seg, image.shape[:2])
        seg = np.asarray(codecs.decode_gray(seg)) if isinstance(seg, bytes) else np.asarray(seg)
        seg = seg[..., 0] if seg.ndim == 3 else seg
        images_out[n], segs_out[n] = augment.authors_ten_crops(image, seg, self.image_size, rng)
      except RECORD_ERRORS as e:
        failed[n] = e
        images_out[n], segs_out[n] = 0, 0
    return failed


class TrainBatches:
  """This shard's training batches as a random-access grain source: element k = batch k, augmented, uint8.

  Element k is batch k % per_epoch of epoch k // per_epoch: a permutation of the shard's positions seeded by
  (seed, epoch), cut into batch_size pieces (each epoch's remainder is left out), each record cropped and flipped
  with a generator seeded by (seed, shard, k). One grain element per batch keeps grain's per-element cost
  (sampler, state, stats; benchmarks/README.md) off every image and lets the batch be written in place; grain's DataLoader
  still checkpoints the position exactly, for any worker count. The work runs in grain's reader threads when
  there are any (decoders and resizers release the GIL).

  A record that cannot be read or decoded (RECORD_ERRORS) does not stop the batch: its row is zeros, its mask
  False (the loss leaves it out), and batch['error'] says why; the others are trained on as usual.
  """

  def __init__(self, source: Any, positions: np.ndarray, batch_size: int, seed: int, shard_index: int,
               num_epochs: int | None, augment_fn: TrainAugment, fields: _Fields):
    self.source = source
    self.positions = np.asarray(positions, np.int64)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shard_index = int(shard_index)
    self.augment_fn = augment_fn
    self.fields = fields
    self.per_epoch = len(self.positions) // self.batch_size
    self._len = self.per_epoch * (num_epochs or _EPOCHS_FOREVER)
    self._order = None  # (epoch, permuted positions) of the last epoch read

  def __len__(self) -> int:
    return self._len

  def order(self, epoch: int) -> np.ndarray:
    """The shard's positions in epoch `epoch`'s order."""
    cached = self._order
    if cached is None or cached[0] != epoch:
      perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.positions))
      cached = (epoch, self.positions[perm])
      self._order = cached  # one assignment: safe with several reader threads
    return cached[1]

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    k = int(k)
    epoch, j = divmod(k, self.per_epoch)
    keys = self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
    rng = np.random.default_rng((self.seed, self.shard_index, k))
    size = self.augment_fn.image_size
    crops = (getattr(self.augment_fn, "crops", 1),) if getattr(self.augment_fn, "crops", 1) > 1 else ()
    records, failed = [], {}
    for n, key in enumerate(keys):
      try:
        records.append(self.source[int(key)])
      except RECORD_ERRORS as e:
        failed[n] = e
        records.append(_unreadable(int(key)))
    out = {"image": np.empty((len(keys), *crops, size, size, 3), np.uint8),
           "seg": np.empty((len(keys), *crops, size, size), np.uint8)}
    failed.update(self.augment_fn(records, rng, out["image"], out["seg"]))
    self.fields.check_classes(out["seg"], records)
    out.update(self.fields.batch_labels(records))
    errors = [""] * len(keys)
    for n, e in failed.items():
      out["mask"][n] = False
      errors[n] = _reason(e)
    out["error"] = np.array(errors, np.str_)
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_order"] = None
    return state

  def __repr__(self) -> str:
    return f"TrainBatches({self.source!r}, {len(self.positions)} records, batch_size={self.batch_size})"


class FinishBatch(grain.transforms.Map):
  """uint8 batch -> the model's inputs, once per batch: normalised float32 image, seg as palette colours (float32,
  normalised like the image) or int32 classes; the same values as normalize / seg_to_model_input.
  """

  def __init__(self, fields: _Fields):
    self.fields = fields
    self._palette_lut = None if fields.palette is None else augment.palette_table(fields.palette)

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = dict(batch)
    batch["image"] = augment.normalize_batch(batch["image"])
    segs = batch["seg"]
    if self.fields.seg_input != "palette":
      batch["seg"] = self.fields.seg(segs)
      return batch
    batch["seg"] = augment.palette_lookup(segs, self._palette_lut)  # classes were checked by TrainBatches
    return batch


def train_loader(source: Any, *, batch_size: int, image_size: int, seg_input: str = "palette",
                 palette: np.ndarray | None = None, seed: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0, num_epochs: int | None = None,
                 scene_key: str = schema.SCENE_S3, crop_scale: tuple[float, float] = (0.35, 1.0),
                 flip: bool = True, antialias: bool = True, num_threads: int = 4,
                 worker_buffer_size: int = 2, finish: str = "auto", augmentation: str = "crop") -> "TrainLoader":
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
    finish: where the uint8 crops become the model's float32 inputs (FinishBatch):
      'device': nowhere on the host: batches stay uint8 (image [B,S,S,3], class map [B,S,S]) and the train step
        finishes them (data.device_finish.DeviceFinish; bit-identical values). The trainer's choice: the host
        only decodes and crops, and 4-12x fewer bytes go to the accelerator.
      'main': in this process, after the workers (which then pass uint8 batches through shared memory);
      'workers': in the workers (or in this process without workers);
      'auto': 'main' with workers, else 'workers'.
    augmentation: 'crop' (paired random resized crops and flips, ours) or 'authors_ten_crop' (the authors'
      rotation, flip, 256/224 resize and ten crops: a crop axis after the batch axis; finish must be 'device').
  """
  if augmentation not in ("crop", "authors_ten_crop"):
    raise errors.ConfigError(f"config.data.augmentation={augmentation!r}; expected 'crop' or 'authors_ten_crop'")
  if augmentation == "authors_ten_crop" and finish != "device":
    raise ValueError("augmentation='authors_ten_crop' needs finish='device' (the train step finishes the crops)")
  _check_seg_input(seg_input, palette)
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  if finish not in FINISH_PLACES:
    raise ValueError(f"finish must be one of {FINISH_PLACES}, got {finish!r}")
  if finish == "auto":
    finish = "main" if worker_count else "workers"
  shard_len = len(source) // shard_count
  if shard_len < batch_size:
    raise errors.ConfigError(f"{source!r}: {len(source)} records cannot fill a batch of {batch_size} on each of "
                             f"{shard_count} shards (config.data.batch_size)")
  if getattr(source, "decode", False) and hasattr(source, "undecoded"):
    source = source.undecoded()  # e.g. sources.ArrayRecordSource: ShardBatches decodes, with the lean decoders
  positions = np.arange(shard_index * shard_len, (shard_index + 1) * shard_len, dtype=np.int64)
  fields = _Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  batches = TrainBatches(source, positions, batch_size, seed, shard_index, num_epochs,
                         AuthorsTenCrop(image_size) if augmentation == "authors_ten_crop"
                         else TrainAugment(image_size, crop_scale, flip, antialias), fields)
  sampler = grain.samplers.IndexSampler(num_records=len(batches), shuffle=False, num_epochs=1)
  if worker_count:
    _absl_flags_ready()
  finish_batch = FinishBatch(fields)
  loader = grain.DataLoader(data_source=batches, sampler=sampler,
                            operations=[finish_batch] if finish == "workers" else [],
                            worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=num_threads,
                                                           prefetch_buffer_size=max(2, num_threads)))
  return TrainLoader(loader, finish_batch if finish == "main" else None)


class TrainLoader:
  """Iterable over training batches: grain's DataLoader, plus FinishBatch in this process when asked."""

  def __init__(self, loader: grain.DataLoader, finish: FinishBatch | None):
    self.loader = loader
    self.finish = finish

  def __iter__(self) -> Any:
    it = iter(self.loader)
    return it if self.finish is None else _FinishingIterator(it, self.finish)


class _FinishingIterator:
  """A DataLoader iterator whose batches go through FinishBatch here; the same get_state / set_state."""

  def __init__(self, it: Any, finish: FinishBatch):
    self._it = it
    self._finish = finish

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return self._finish.map(next(self._it))

  def get_state(self) -> Any:
    return self._it.get_state()

  def set_state(self, state: Any) -> None:
    self._it.set_state(state)

  def close(self) -> None:
    if hasattr(self._it, "close"):
      self._it.close()


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
  """Centre crop (resize the shorter side, crop the centre) or five crops; labels; padding flags.

  finish_on_host=False leaves the crops uint8 (photo and class map) for DeviceFinish in the evaluation step.
  """

  def __init__(self, image_size: int, fields: _Fields, tta: str, crop_fraction: float, finish_on_host: bool = True,
               image_ids: bool = False):
    self.image_size = image_size
    self.fields = fields
    self.tta = tta
    self.crop_fraction = crop_fraction
    self.finish_on_host = finish_on_host
    self.image_ids = image_ids

  def map(self, element: tuple[bool, dict[str, Any]]) -> dict[str, np.ndarray]:
    real, ex = element
    image, seg = augment.eval_crops(*_split(ex), self.image_size, self.tta, self.crop_fraction)
    if self.finish_on_host:
      image, seg = augment.normalize(image), self.fields.seg(seg)
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
                crop_fraction: float = EVAL_CROP_FRACTION, worker_count: int = 0, num_threads: int = 4,
                finish: str = "host", image_ids: bool = False) -> EvalLoader:
  """Padded batches of this process's shard: every record once over all shards, mask False on padding.

  Args:
    tta: 'center' (one centre crop) or 'five_crop' (4 corners + centre, a crop axis after the batch axis).
    crop_fraction: side of each crop as a fraction of the shorter side (resize to S / crop_fraction, then crop
      S: the usual 0.875; 1.0 keeps the whole centred square).
    finish: 'host' (float32 model inputs, the batch contract) or 'device' (uint8 photo and class map, for
      data.device_finish.DeviceFinish in the evaluation step; what the evaluator and validation use).
    image_ids: add each record's image_id (text, '' on padding) to the batches (galleries name their images).
    Others as in train_loader; batch_size is per process.
  """
  _check_seg_input(seg_input, palette)
  if tta not in augment.TTA_MODES:
    raise errors.ConfigError(f"config.eval.tta={tta!r}; expected one of {augment.TTA_MODES}")
  if not 0.0 < crop_fraction <= 1.0:
    raise errors.ConfigError(f"config.eval.crop_fraction={crop_fraction!r}: must be in (0, 1]")
  if finish not in ("host", "device"):
    raise ValueError(f"eval finish must be 'host' or 'device', got {finish!r}")
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  n = len(source)
  positions = shard_positions(n, shard_index, shard_count)
  largest_shard = math.ceil(n / shard_count)
  num_batches = math.ceil(largest_shard / batch_size) if n else 0
  padded = _PaddedShard(source, positions, num_batches * batch_size)
  fields = _Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  ds = (grain.MapDataset.source(padded)
        .map(EvalTransform(int(image_size), fields, tta, float(crop_fraction), finish_on_host=finish == "host",
                           image_ids=image_ids))
        .batch(int(batch_size), drop_remainder=False))
  return EvalLoader(ds, num_batches, n, len(positions), int(worker_count), int(num_threads))


def stack_batches(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Concatenates batches along the batch axis (tests, small evaluations)."""
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
