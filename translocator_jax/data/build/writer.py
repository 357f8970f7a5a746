"""The build engine shared by every dataset builder: items -> sharded, resumable TFDS/ArrayRecord directory.

A builder (data/builders.py) turns its inputs into a sorted list of `Item`s plus the problems it found while
planning; `write_dataset` then

  * splits the items into pieces of `piece_size` (the ArrayRecord shards `{name}-{split}.array_record-{i:05d}-of-
    {n:05d}`), processed in parallel worker processes;
  * writes each piece under a temporary name in `_staging/` and renames it into place when complete, with its
    piece report (`_staging/pieces/{i:05d}.json`) renamed first: a rerun after a crash skips complete pieces and
    gives the same records as an uninterrupted build (items and their order depend only on the inputs);
  * writes dataset_info.json / features.json (tfds.folder_dataset.write_metadata), the shard manifest
    shards.json (records/manifest.py: each shard's size, record count and xxh3_64 checksum, taken as the piece
    is written, and the command that rebuilds a shard: this one, which rewrites the shards that are missing) and
    report.json: {"written": N, "skipped": [{"source": ..., "reason": ...}, ...], ...}.

Images are encoded here with Pillow and handed to TFDS as bytes, so the writer itself needs no TensorFlow ops;
`tfds.features` does need TensorFlow installed (the `data` extra). Reading the result does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from translocator_jax import errors
from translocator_jax.data.build import images as images_lib
from translocator_jax.data.build import segmenter
from translocator_jax.data.records import manifest
from translocator_jax.data.records import schema
from translocator_jax.geo import cells

STAGING = "_staging"
REPORT = "report.json"
BUILD_STATE = "build.json"
SHARD_TEMPLATE = "{name}-{split}.array_record-{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to write. `latlon` None: read it from the photo's EXIF GPS. `seg_name` None: run the segmenter."""
  image_id: str
  rgb_name: str
  seg_name: str | None
  latlon: tuple[float, float] | None
  scenes: tuple[int, int, int] = (schema.UNKNOWN, schema.UNKNOWN, schema.UNKNOWN)


@dataclasses.dataclass
class BuildOptions:
  name: str
  split: str
  output_dir: pathlib.Path
  piece_size: int = 2000
  workers: int = 1
  partition_paths: Sequence[str] = ()  # Coarse -> fine partition CSVs; empty: cells are -1.
  segmenter_dir: str | None = None  # transformers model folder for items without a map.
  # Where a map fits the photo both as stored and EXIF-rotated (square or flipped photos): True when the maps were
  # computed on the rotated view (data_prep.segment), False for the published maps (computed on stored pixels).
  maps_oriented: bool = False
  segmentation_maps: bool = True  # False: every record holds schema.NO_MAP (photos_to_dataset --no-seg)
  max_pixels: int = images_lib.DEFAULT_MAX_PIXELS
  max_short_side: int = schema.MAX_SHORT_SIDE
  jpeg_quality: int = images_lib.DEFAULT_JPEG_QUALITY
  description: str = ""
  keep_spool: bool = False
  progress: bool = True
  command: str = ""  # the command line that runs this build, for the manifest's rebuild hint (not fingerprinted)

  def fingerprint_fields(self) -> dict:
    return {"name": self.name, "split": self.split, "piece_size": self.piece_size,
            "partitions": [str(p) for p in self.partition_paths], "segmenter": self.segmenter_dir,
            "maps_oriented": self.maps_oriented,
            "max_pixels": self.max_pixels, "max_short_side": self.max_short_side, "quality": self.jpeg_quality,
            # Only when set: builds with maps keep the fingerprint they had before the option existed (resumable).
            **({} if self.segmentation_maps else {"segmentation_maps": False})}


def shard_name(name: str, split: str, index: int, count: int) -> str:
  return SHARD_TEMPLATE.format(name=name, split=split, index=index, count=count)


def _fingerprint(items: Sequence[Item], options: BuildOptions, stores: dict) -> str:
  h = hashlib.sha256()
  h.update(json.dumps({"options": options.fingerprint_fields(),
                       "stores": {k: (v.spec() if v is not None else None) for k, v in stores.items()}},
                      sort_keys=True).encode())
  for it in items:
    h.update(json.dumps(dataclasses.astuple(it)).encode())
  return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Worker side: one piece.

_WORKER_CACHE: dict[str, Any] = {}
_LATLON64 = "_latlon_float64"  # an example's coordinates as read, until its cells are assigned


def _features():
  if "features" not in _WORKER_CACHE:
    _WORKER_CACHE["features"] = schema.features()
  return _WORKER_CACHE["features"]


def _serializer():
  """The TFDS example serializer of the schema (what FeaturesDict.serialize_example uses)."""
  if "serializer" not in _WORKER_CACHE:
    from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
    _WORKER_CACHE["serializer"] = example_serializer.ExampleSerializer(_features().get_serialized_info())
  return _WORKER_CACHE["serializer"]


def serialize(example: dict) -> bytes:
  """The tf.Example bytes of a schema example, with its features in sorted order: the same inputs give the same
  shard bytes in every run (protobuf's default map order changes from process to process)."""
  encoded = _features().encode_example(example)
  return _serializer().get_tf_example(encoded).SerializeToString(deterministic=True)


def _partitions(paths: Sequence[str]):
  key = ("partitions", tuple(paths))
  if key not in _WORKER_CACHE:
    _WORKER_CACHE[key] = [cells.load_partition_csv(p) for p in paths]
  return _WORKER_CACHE[key]


def _segmenter(model_dir: str):
  key = ("segmenter", model_dir)
  if key not in _WORKER_CACHE:
    _WORKER_CACHE[key] = segmenter.Segmenter(model_dir)
  return _WORKER_CACHE[key]


def assign_cells(latlon: np.ndarray, partition_paths: Sequence[str]) -> np.ndarray:
  """int32 [N, NUM_PARTITIONS]: the class of each coordinate in each partition (-1: none / no partitions)."""
  out = np.full((len(latlon), schema.NUM_PARTITIONS), schema.UNKNOWN, np.int32)
  if len(latlon) and partition_paths:
    for j, part in enumerate(_partitions(partition_paths)):
      out[:, j] = np.asarray(part.assign(latlon), np.int32)
  return out


def _process_item(item: Item, rgb_store, seg_store, options: BuildOptions) -> dict:
  """The schema example of one item (cells filled in later, per piece); BadInput says why it is skipped."""
  data = _read(rgb_store, item.rgb_name, "image")
  decoded = images_lib.decode_image(data, max_pixels=options.max_pixels, max_short_side=options.max_short_side)
  if item.latlon is not None:
    latlon = images_lib.check_latlon(*item.latlon)
  else:
    latlon = images_lib.exif_latlon(decoded.exif)
  if item.seg_name is not None:
    where = f"segmentation map {seg_store.describe(item.seg_name)}"
    try:
      seg_img = images_lib.open_segmentation(_read(seg_store, item.seg_name, "segmentation map"),
                                             max_pixels=options.max_pixels)
    except images_lib.BadInput as e:
      raise images_lib.BadInput(f"{where}: {e}") from None
    transpose = images_lib.match_segmentation(seg_img.size[::-1], decoded, prefer_oriented=options.maps_oriented)
    jpeg, size, _ = images_lib.finish_image(decoded, transpose=transpose, max_short_side=options.max_short_side,
                                            quality=options.jpeg_quality)
    try:
      classes = images_lib.segmentation_classes(seg_img, size)  # Mapped at the output size: fewer pixels.
    except images_lib.BadInput as e:
      raise images_lib.BadInput(f"{where}: {e}") from None
  elif not options.segmentation_maps:
    jpeg, size, _ = images_lib.finish_image(decoded, transpose=True, max_short_side=options.max_short_side,
                                            quality=options.jpeg_quality)
  else:
    if not options.segmenter_dir:
      raise images_lib.BadInput("no segmentation map and no segmenter")
    jpeg, size, rgb = images_lib.finish_image(decoded, transpose=True, max_short_side=options.max_short_side,
                                              quality=options.jpeg_quality)
    classes = _segmenter(options.segmenter_dir)(np.asarray(rgb))
  return {
      schema.IMAGE: jpeg,
      schema.SEGMENTATION: (images_lib.encode_classes(classes, size) if options.segmentation_maps
                            else schema.NO_MAP),
      schema.LATLON: latlon.astype(np.float32),
      _LATLON64: latlon,
      schema.SCENE_S3: int(item.scenes[0]),
      schema.SCENE_S16: int(item.scenes[1]),
      schema.SCENE_S365: int(item.scenes[2]),
      schema.IMAGE_ID: item.image_id,
  }


def _read(store, name: str, what: str) -> bytes:
  try:
    return store.read(name)
  except (OSError, KeyError) as e:
    raise images_lib.BadInput(f"cannot read {what}: {e}") from None


def _write_piece(args) -> dict:
  """Writes piece `index` (temporary names, then renames); returns its report."""
  index, count, items, rgb_store, seg_store, options = args
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(options.output_dir)
  staging = out_dir / STAGING
  final = out_dir / shard_name(options.name, options.split, index, count)
  tmp = staging / (final.name + f".tmp{os.getpid()}")
  examples, skipped = [], []
  for item in items:
    try:
      examples.append(_process_item(item, rgb_store, seg_store, options))
    except images_lib.BadInput as e:
      skipped.append({"source": rgb_store.describe(item.rgb_name), "reason": str(e)})
    except Exception as e:  # pylint: disable=broad-except  # A decoder or segmenter failure is one file's problem.
      skipped.append({"source": rgb_store.describe(item.rgb_name),
                      "reason": f"unexpected {type(e).__name__} while processing: {e}"})
  if examples:
    latlon = np.stack([ex.pop(_LATLON64) for ex in examples])  # as read (float64): exact cells
    cells = assign_cells(latlon, options.partition_paths)
    for ex, c in zip(examples, cells):
      ex[schema.CELLS] = c
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  for ex in examples:
    writer.write(serialize(ex))
  writer.close()
  # Hashed here, while the piece is in the page cache: the manifest then needs no second read of the set.
  report = {"index": index, "written": len(examples), "skipped": skipped,
            "num_bytes": tmp.stat().st_size, manifest.CHECKSUM: manifest.checksum(tmp)}
  piece_json = staging / "pieces" / f"{index:05d}.json"
  piece_tmp = piece_json.with_name(piece_json.name + f".tmp{os.getpid()}")
  piece_tmp.write_text(json.dumps(report))
  os.replace(piece_tmp, piece_json)
  os.replace(tmp, final)  # The shard's final name is the completion mark.
  return report


# ---------------------------------------------------------------------------------------------------------------
# Driver.

def _piece_complete(out_dir: pathlib.Path, options: BuildOptions, index: int, count: int) -> bool:
  return ((out_dir / shard_name(options.name, options.split, index, count)).is_file()
          and (out_dir / STAGING / "pieces" / f"{index:05d}.json").is_file())


def write_dataset(items: Sequence[Item], rgb_store, seg_store, plan_skipped: Sequence[dict],
                  options: BuildOptions) -> dict:
  """Writes (or resumes) the dataset; returns the report (also written to report.json)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(options.output_dir)
  staging = out_dir / STAGING
  (staging / "pieces").mkdir(parents=True, exist_ok=True)
  items = list(items)
  count = max(1, math.ceil(len(items) / options.piece_size))
  fingerprint = _fingerprint(items, options, {"rgb": rgb_store, "seg": seg_store})
  state_path = staging / BUILD_STATE
  if state_path.exists():
    state = json.loads(state_path.read_text())
    if state.get("fingerprint") != fingerprint:
      raise errors.BuildError(f"{out_dir} holds a build of other inputs or options (see {state_path}); use a new "
                              "output folder or remove this one")
  else:
    stale = [p.name for p in out_dir.glob(f"{options.name}-{options.split}.array_record-*")]
    if stale:
      raise errors.BuildError(f"{out_dir} already holds shards {stale[:3]} of an unknown build; use a new output "
                              "folder")
    state_path.write_text(json.dumps({"fingerprint": fingerprint, "options": options.fingerprint_fields(),
                                      "items": len(items), "pieces": count}, indent=1))

  for leftover in staging.glob("*.tmp*"):  # Pieces a killed run left half-written.
    leftover.unlink()
  for leftover in (staging / "pieces").glob("*.tmp*"):
    leftover.unlink()
  pending = [i for i in range(count) if not _piece_complete(out_dir, options, i, count)]
  done_before = count - len(pending)
  print(f"[{options.name}] {len(items)} images in {count} pieces; {done_before} already complete, "
        f"{len(pending)} to write with {options.workers} worker(s)", file=sys.stderr)
  tasks = [(i, count, items[i * options.piece_size:(i + 1) * options.piece_size], rgb_store, seg_store, options)
           for i in pending]
  start = time.time()
  done_items = 0
  with tqdm(total=sum(len(t[2]) for t in tasks), desc=f"building {options.name}", unit=" img",
            disable=not options.progress) as bar:
    if options.workers > 1 and len(tasks) > 1:
      ctx = multiprocessing.get_context("spawn")  # TensorFlow-style libraries do not survive fork.
      with ctx.Pool(options.workers) as pool:
        for rep in pool.imap_unordered(_write_piece, tasks):
          done_items += rep["written"] + len(rep["skipped"])
          bar.update(rep["written"] + len(rep["skipped"]))
    else:
      for task in tasks:
        rep = _write_piece(task)
        done_items += rep["written"] + len(rep["skipped"])
        bar.update(rep["written"] + len(rep["skipped"]))
  elapsed = time.time() - start

  pieces = [json.loads((staging / "pieces" / f"{i:05d}.json").read_text()) for i in range(count)]
  shard_lengths = [p["written"] for p in pieces]
  split_info = tfds.core.SplitInfo(name=options.split, shard_lengths=shard_lengths,
                                   num_bytes=sum(p["num_bytes"] for p in pieces))
  metadata = tfds.core.MetadataDict(
      schema_keys=[schema.IMAGE, schema.SEGMENTATION, schema.LATLON, schema.SCENE_S3, schema.SCENE_S16,
                   schema.SCENE_S365, schema.CELLS, schema.IMAGE_ID],
      num_seg_classes=150 if options.segmentation_maps else 0,
      seg_classes="ADE20K-150" if options.segmentation_maps else "none",
      partitions=[os.path.basename(str(p)) for p in options.partition_paths],
      **{schema.MAPS_METADATA_KEY: options.segmentation_maps})
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=schema.features(), split_infos=[split_info], check_data=False,
      description=options.description or f"{options.name} in the TransLocator-JAX schema",
      metadata=metadata)
  # Pieces written before manifests existed have no checksum in their report: those shards are read once here.
  manifest.write(out_dir, {options.split: [
      manifest.shard_entry(out_dir / shard_name(options.name, options.split, p["index"], count), p["written"],
                           p.get(manifest.CHECKSUM)) for p in pieces]}, command=options.command, scope="shard")
  skipped = list(plan_skipped) + [s for p in pieces for s in p["skipped"]]
  report = {"dataset": options.name, "split": options.split, "written": sum(shard_lengths),
            "skipped": skipped, "pieces": count, "resumed_pieces": done_before}
  (out_dir / REPORT).write_text(json.dumps(report, indent=1))
  if not options.keep_spool:
    for spool in staging.glob("spool-*.sqlite"):
      spool.unlink()
  rate = done_items / elapsed if elapsed > 0 else float("nan")
  print(f"[{options.name}] wrote {report['written']} records ({count} shards) to {out_dir}; skipped "
        f"{len(skipped)} (reasons in {out_dir / REPORT}); this run: {done_items} images in {elapsed:.1f} s "
        f"({rate:.1f} img/s)", file=sys.stderr)
  return report
