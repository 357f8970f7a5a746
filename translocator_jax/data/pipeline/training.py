"""The training input pipeline (grain): shuffled, augmented, checkpointable; evaluation's is data/pipeline/evaluation.py.

Batches follow the batch contract of data/pipeline/fields.py, with image uint8 [B, S, S, 3] and seg uint8 [B, S, S]
class indices: data.device_finish.DeviceFinish turns them into the model's float32 inputs inside the jitted step
(4-12x fewer bytes to the accelerator, and no host time on it).

train_loader returns a grain.DataLoader: `it = iter(loader)`; `it.get_state()` / `it.set_state(state)` restore the
stream exactly (same batches; grain requires the same worker_count); the train loop checkpoints `it` with grain's
orbax handler (grain.checkpoint.CheckpointHandler / CheckpointSave / CheckpointRestore).

Training speed (benchmarks/input_pipeline.py): a grain element is a whole batch (TrainBatches), so grain's
per-element cost is paid once per batch; records are read undecoded and decoded by `codecs` (no Python-level header
parsing), the crop box is drawn before decoding (the map is inflated only down to the box); photos go through
OpenCV's warp where that equals Pillow's filter (upscaled boxes) and Pillow's antialiasing resize elsewhere.
"""
from __future__ import annotations

import math
from typing import Any

import grain
import numpy as np

from translocator_jax import errors
from translocator_jax.data.pipeline import augment
from translocator_jax.data.pipeline import fields as fields_lib
from translocator_jax.data.records import codecs
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources

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
    seg = fields_lib.zeros_if_no_map(seg, tuple(hw))
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
      except fields_lib.RECORD_ERRORS as e:
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
        except fields_lib.RECORD_ERRORS as e:
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
        seg = fields_lib.zeros_if_no_map(seg, image.shape[:2])
        seg = np.asarray(codecs.decode_gray(seg)) if isinstance(seg, bytes) else np.asarray(seg)
        seg = seg[..., 0] if seg.ndim == 3 else seg
        images_out[n], segs_out[n] = augment.authors_ten_crops(image, seg, self.image_size, rng)
      except fields_lib.RECORD_ERRORS as e:
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

  A record that cannot be read or decoded (fields_lib.RECORD_ERRORS) does not stop the batch: its row is zeros, its mask
  False (the loss leaves it out), and batch['error'] says why; the others are trained on as usual.
  """

  def __init__(self, source: Any, positions: np.ndarray, batch_size: int, seed: int, shard_index: int,
               num_epochs: int | None, augment_fn: TrainAugment, fields: fields_lib.Fields):
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
      except fields_lib.RECORD_ERRORS as e:
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


def train_loader(source: Any, *, batch_size: int, image_size: int, seg_input: str = "palette",
                 palette: np.ndarray | None = None, seed: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0, num_epochs: int | None = None,
                 scene_key: str = schema.SCENE_S3, crop_scale: tuple[float, float] = (0.35, 1.0),
                 flip: bool = True, antialias: bool = True, num_threads: int = 4,
                 worker_buffer_size: int = 2, augmentation: str = "crop") -> grain.DataLoader:
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
    augmentation: 'crop' (paired random resized crops and flips, ours) or 'authors_ten_crop' (the authors'
      rotation, flip, 256/224 resize and ten crops: a crop axis after the batch axis).
  """
  if augmentation not in augment.AUGMENTATIONS:
    raise errors.ConfigError(f"config.data.augmentation={augmentation!r}; expected one of {augment.AUGMENTATIONS}")
  fields_lib.check_seg_input(seg_input, palette)
  shard_index, shard_count = fields_lib.process_shard(shard_index, shard_count)
  shard_len = len(source) // shard_count
  if shard_len < batch_size:
    raise errors.ConfigError(f"{source!r}: {len(source)} records cannot fill a batch of {batch_size} on each of "
                             f"{shard_count} shards (config.data.batch_size)")
  if getattr(source, "decode", False) and hasattr(source, "undecoded"):
    source = source.undecoded()  # e.g. sources.ArrayRecordSource: ShardBatches decodes, with the lean decoders
  positions = np.arange(shard_index * shard_len, (shard_index + 1) * shard_len, dtype=np.int64)
  fields = fields_lib.Fields(seg_input, None if palette is None else np.asarray(palette, np.uint8), scene_key)
  batches = TrainBatches(source, positions, batch_size, seed, shard_index, num_epochs,
                         AuthorsTenCrop(image_size) if augmentation == "authors_ten_crop"
                         else TrainAugment(image_size, crop_scale, flip, antialias), fields)
  sampler = grain.samplers.IndexSampler(num_records=len(batches), shuffle=False, num_epochs=1)
  if worker_count:
    fields_lib.absl_flags_ready()
  return grain.DataLoader(data_source=batches, sampler=sampler, worker_count=worker_count,
                          worker_buffer_size=worker_buffer_size,
                          read_options=grain.ReadOptions(num_threads=num_threads,
                                                         prefetch_buffer_size=max(2, num_threads)))
