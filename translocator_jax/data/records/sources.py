"""Random-access sources over built TFDS directories (ArrayRecord), readable without TensorFlow.

`open_source(dataset_dir, split)`: record i is the decoded example dict of the schema (image uint8 [H, W, 3],
segmentation uint8 [H, W, 1], latlon float32 [2], cells int32 [3], scene_* int32, image_id bytes) plus
`index` = i, in the order of `tfds.builder_from_directory(dir).as_data_source(split)`. A record without a map
(schema.NO_MAP, a set built with --no-seg: `has_segmentation_maps` is False) decodes to a map of zeros the size of
its image; undecoded, its segmentation stays NO_MAP.

For datasets in the project schema stored as ArrayRecord (all of ours) it reads the shards directly and parses
each tf.train.Example with protobuf (about 8 us a record here, against about 100 us for TFDS's generic numpy
deserialiser), then decodes the JPEG / PNG with Pillow; any other TFDS dataset goes through TFDS's own data source.
Sources open lazily in each process, so they pickle as a few strings (grain worker processes get a copy).

open_source first checks the split's shards against the dataset's manifest (manifest.py: sizes and counts, no
reading), so every reader (training, evaluation, galleries) refuses a cut-short shard before it starts. A record
that cannot be read, parsed or decoded raises BadRecordError naming its shard file and its position there.
"""
from __future__ import annotations

import bisect
import json
import os
import pathlib
from typing import Any

from google.protobuf import message as protobuf_message
import numpy as np

from translocator_jax import errors
from translocator_jax.data.records import codecs, manifest, schema

INDEX = "index"
# What reading one damaged record raises: riegeli's corruption errors (RuntimeError), I/O errors, a tf.Example
# that does not parse; decoding adds codecs.DECODE_ERRORS.
READ_ERRORS = (RuntimeError, OSError, ValueError, protobuf_message.DecodeError)


class BadRecordError(errors.DataError):
  """One record cannot be read or decoded; `file` and `record` say where (the shard, the position in it)."""

  def __init__(self, text: str, *, file: str | None = None, record: int | None = None, index: int | None = None,
               what: str = "cannot be read", reason: str = ""):
    super().__init__(text)
    self.file, self.record, self.index, self.what, self.reason = file, record, index, what, reason


def error_text(e: BaseException) -> str:
  """One line for a record's error: its type and message (Pillow's 'cannot identify' without the object repr)."""
  if type(e).__name__ == "UnidentifiedImageError":
    return "UnidentifiedImageError: not an image Pillow can identify"
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}"


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
        raise errors.DataError(f"{self.dataset_dir} has no split {self.split!r}; it has {sorted(builder.info.splits)}")
      decoders = None
      if not self.decode:  # raw JPEG / PNG bytes (benchmarks, custom decoders)
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


class ArrayRecordSource:
  """grain RandomAccessDataSource over one split of a TFDS ArrayRecord directory in the project schema."""

  def __init__(self, dataset_dir: str | os.PathLike, split: str, *, decode: bool = True):
    self.dataset_dir = os.fspath(dataset_dir)
    self.split = split
    self.decode = decode
    info = json.loads((pathlib.Path(self.dataset_dir) / "dataset_info.json").read_text())
    splits = {s["name"]: s for s in info.get("splits", [])}
    if split not in splits:
      raise errors.DataError(f"{self.dataset_dir} has no split {split!r}; it has {sorted(splits)}")
    shards = manifest.split_shards(self.dataset_dir)[split]
    self.files = [os.fspath(p) for p, _ in shards]
    missing = [f for f in self.files if not os.path.exists(f)]
    if missing:
      raise FileNotFoundError(f"{self.dataset_dir} split {split!r}: shard files missing: {missing[:3]}")
    self._starts = np.cumsum([0] + [n for _, n in shards]).tolist()  # each shard's first index
    self._len = self._starts[-1]
    self._source = None

  def _open(self):
    if self._source is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._source = grain.sources.ArrayRecordDataSource(self.files)
    return self._source

  def __len__(self) -> int:
    return self._len

  def locate(self, i: int) -> tuple[str, int]:
    """(shard file, position in it) of record i."""
    shard = bisect.bisect_right(self._starts, int(i)) - 1
    return self.files[shard], int(i) - self._starts[shard]

  def bad_record(self, i: int, e: BaseException, what: str = "cannot be read") -> BadRecordError:
    """BadRecordError naming record i's shard and position, for the error `e` it raised."""
    file, record = self.locate(i)
    reason = error_text(e)
    try:
      hint = manifest.rebuild_hint(manifest.read(self.dataset_dir), self.dataset_dir, file)
    except manifest.DamagedShardError:
      hint = manifest.rebuild_hint(None, self.dataset_dir, file)
    return BadRecordError(f"{file} record {record} (index {i} of split {self.split!r}) {what}: {reason}; {hint}",
                          file=file, record=record, index=int(i), what=what, reason=reason)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < self._len:
      raise IndexError(f"index {i} out of range for {self.dataset_dir} split {self.split!r} ({self._len} records)")
    try:
      ex = self._read(i)
    except READ_ERRORS as e:
      raise self.bad_record(i, e) from e
    if self.decode:
      try:
        ex[schema.IMAGE] = codecs.pil_decode(ex[schema.IMAGE], "RGB")
        seg = ex[schema.SEGMENTATION]
        ex[schema.SEGMENTATION] = (codecs.pil_decode(seg, "L")[..., None] if seg != schema.NO_MAP
                                   else np.zeros(ex[schema.IMAGE].shape[:2] + (1,), np.uint8))
      except codecs.DECODE_ERRORS as e:
        raise self.bad_record(i, e, "cannot be decoded") from e
    ex[INDEX] = np.int64(i)
    return ex

  def _read(self, i: int) -> dict[str, Any]:
    """Record i with image and segmentation as their JPEG / PNG bytes."""
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

    feats = tf_example_pb2.Example.FromString(self._open()[i]).features.feature
    try:
      image = feats[schema.IMAGE].bytes_list.value[0]
      seg = feats[schema.SEGMENTATION].bytes_list.value[0]
      ex = {
          schema.LATLON: np.asarray(feats[schema.LATLON].float_list.value, np.float32),
          schema.CELLS: np.asarray(feats[schema.CELLS].int64_list.value, np.int32),
          schema.IMAGE_ID: feats[schema.IMAGE_ID].bytes_list.value[0],
      }
      for key in (schema.SCENE_S3, schema.SCENE_S16, schema.SCENE_S365):
        ex[key] = np.int32(feats[key].int64_list.value[0])
    except (IndexError, KeyError) as e:
      raise ValueError(f"not in the project schema (missing or empty {e})") from e
    ex[schema.IMAGE], ex[schema.SEGMENTATION] = image, seg
    return ex

  def undecoded(self) -> "ArrayRecordSource":
    """The same records with image and segmentation left as JPEG / PNG bytes (callers decode them)."""
    other = object.__new__(ArrayRecordSource)
    other.__dict__.update(self.__getstate__())
    other.decode = False
    return other

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self.dataset_dir!r}, split={self.split!r}, n={self._len})"


def _is_schema_array_record(dataset_dir: str | os.PathLike) -> bool:
  d = pathlib.Path(dataset_dir)
  try:
    info = json.loads((d / "dataset_info.json").read_text())
    features = json.loads((d / "features.json").read_text())["featuresDict"]["features"]
  except (OSError, KeyError, ValueError):
    return False
  keys = {schema.IMAGE, schema.SEGMENTATION, schema.LATLON, schema.CELLS, schema.IMAGE_ID, schema.SCENE_S3,
          schema.SCENE_S16, schema.SCENE_S365}
  return info.get("fileFormat") == "array_record" and keys <= set(features)


def has_segmentation_maps(dataset_dir: str | os.PathLike) -> bool:
  """False for a set built without maps (its metadata.json says so); True otherwise (every older build has maps)."""
  try:
    metadata = json.loads((pathlib.Path(dataset_dir) / "metadata.json").read_text())
  except (OSError, ValueError):
    return True
  return bool(metadata.get(schema.MAPS_METADATA_KEY, True)) if isinstance(metadata, dict) else True


def open_source(dataset_dir: str | os.PathLike, split: str, *, decode: bool = True) -> Any:
  """Random-access source of decoded example dicts (plus 'index') of one split of a built TFDS dataset.

  decode=False leaves image and segmentation as their JPEG / PNG bytes.
  """
  if not (pathlib.Path(dataset_dir) / "dataset_info.json").exists():
    raise FileNotFoundError(f"{dataset_dir} is not a built TFDS dataset (no dataset_info.json)")
  manifest.check_split(dataset_dir, split)  # before anything reads a record: a damaged shard named in one line
  if _is_schema_array_record(dataset_dir):
    return ArrayRecordSource(dataset_dir, split, decode=decode)
  return TfdsSource(dataset_dir, split, decode=decode)
