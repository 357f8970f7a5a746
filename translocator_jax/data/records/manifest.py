"""Shard manifests: what every shard of a built dataset was when it was written, so a damaged one is named.

Every build (data/build/writer.py for MP-16, the benchmarks and photo folders; the Earth-patches TFDS builder)
writes `shards.json` next to dataset_info.json:

  {"format": 1, "checksum": "xxh3_64",
   "rebuild": {"command": "python -m data_prep.build_benchmark ...", "cwd": "/where/it/ran", "scope": "shard"},
   "splits": {"test": [{"file": "im2gps-test.array_record-00000-of-00002", "bytes": 1234, "records": 2000,
                        "xxh3_64": "9f0c..."}, ...]}}

`check_split` (every reader: sources.open_source, so training, evaluation and gallery building) compares each
shard's size with the manifest and the manifest's record count with dataset_info.json's, which readers index by:
a few stat calls, no reading; a cut-short copy or a shard swapped in from another build is refused in one line.
The checksum is left to `data_prep.verify`, which reads every byte. A set built before manifests is read with a
one-line warning.

rebuild.scope 'shard': the writer's builds resume (a missing shard is rewritten by rerunning the same command);
'dataset': the whole folder is removed and built again (TFDS builds, Earth patches).
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import pathlib
from typing import Any, Iterable, Sequence

import xxhash

from translocator_jax import errors

MANIFEST = "shards.json"
FORMAT = 1
CHECKSUM = "xxh3_64"  # xxHash3, 64 bit: ~20 GB/s a core here, far above a disk's rate, so verify is I/O-bound
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

log = logging.getLogger(__name__)
_warned: set[str] = set()


class DamagedShardError(errors.DataError):
  """A shard is missing or differs from its manifest; the message names the file, what differs and the rebuild."""


def checksum(path: str | os.PathLike) -> str:
  """The xxh3_64 hex digest of a file. Hashed through a read-only mapping: no copy out of the page cache (twice
  the speed of read() on a cached file), and sequential read-ahead from the disk as fast as `cat`."""
  h = xxhash.xxh3_64()
  with open(path, "rb", buffering=0) as f:
    if os.fstat(f.fileno()).st_size == 0:
      return h.hexdigest()  # an empty file cannot be mapped
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      if hasattr(m, "madvise"):
        m.madvise(mmap.MADV_SEQUENTIAL)
      h.update(m)
  return h.hexdigest()


def count_records(path: str | os.PathLike) -> int:
  """Records in an ArrayRecord file, from its footer (the index); errors.DataError when the footer cannot be read."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    if not reader.ok():
      raise errors.DataError(f"{path}: not a readable ArrayRecord file (its footer cannot be read)")
    return int(reader.num_records())
  finally:
    try:
      reader.close()
    except (RuntimeError, OSError, ValueError):
      pass  # a damaged file's reader repeats its error on close


def shard_entry(path: str | os.PathLike, records: int | None = None, digest: str | None = None) -> dict[str, Any]:
  """One shard's manifest entry. `records` (what the writer wrote) is checked against the file's own count."""
  path = pathlib.Path(path)
  counted = count_records(path)
  if records is not None and int(records) != counted:
    raise ValueError(f"{path}: the writer wrote {records} records but the file holds {counted}")
  return {"file": path.name, "bytes": path.stat().st_size, "records": counted,
          CHECKSUM: digest or checksum(path)}


def split_shards(dataset_dir: str | os.PathLike) -> dict[str, list[tuple[pathlib.Path, int]]]:
  """{split: [(shard path, records)]} as dataset_info.json lists them (the files readers open)."""
  d = pathlib.Path(dataset_dir)
  info = json.loads((d / "dataset_info.json").read_text())
  out = {}
  for s in info.get("splits", []):
    lengths = [int(n) for n in s.get("shardLengths", [])]
    template = s.get("filepathTemplate") or DEFAULT_TEMPLATE
    out[s["name"]] = [
        (d / template.format(DATASET=info["name"], SPLIT=s["name"], FILEFORMAT=info.get("fileFormat", "tfrecord"),
                             SHARD_X_OF_Y=f"{i:05d}-of-{len(lengths):05d}", SHARD_INDEX=i,
                             NUM_SHARDS=len(lengths)), n)
        for i, n in enumerate(lengths)]
  return out


def write(dataset_dir: str | os.PathLike, entries: dict[str, Sequence[dict[str, Any]]], *, command: str,
          cwd: str | None = None, scope: str = "shard") -> pathlib.Path:
  """Writes shards.json (atomically: a reader never sees half a manifest)."""
  if scope not in ("shard", "dataset"):
    raise ValueError(f"rebuild scope must be 'shard' or 'dataset', got {scope!r}")
  d = pathlib.Path(dataset_dir)
  manifest = {"format": FORMAT, "checksum": CHECKSUM,
              "rebuild": {"command": command, "cwd": cwd or os.getcwd(), "scope": scope},
              "splits": {split: list(e) for split, e in entries.items()}}
  tmp = d / (MANIFEST + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(manifest, indent=1))
  os.replace(tmp, d / MANIFEST)
  return d / MANIFEST


def write_for(dataset_dir: str | os.PathLike, shards: dict[str, Iterable[tuple[os.PathLike, int]]], *,
              command: str, scope: str = "shard") -> pathlib.Path:
  """Reads every listed shard once (count from its footer, checksum) and writes the manifest."""
  entries = {split: [shard_entry(p, n) for p, n in files] for split, files in shards.items()}
  return write(dataset_dir, entries, command=command, scope=scope)


def read(dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The manifest of a dataset folder, or None when it was built before manifests."""
  path = pathlib.Path(dataset_dir) / MANIFEST
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    manifest = json.loads(text)
    if not isinstance(manifest.get("splits"), dict):
      raise ValueError("no 'splits'")
  except (ValueError, AttributeError) as e:
    raise DamagedShardError(f"{path}: not a readable shard manifest ({e}); rebuild the dataset, or remove the "
                            "file to read the set unchecked") from None
  return manifest


def rebuild_hint(manifest: dict[str, Any] | None, dataset_dir: str | os.PathLike, file: str | os.PathLike) -> str:
  """Which command rebuilds `file`, as the build recorded it."""
  how = (manifest or {}).get("rebuild") or {}
  command, cwd = how.get("command"), how.get("cwd")
  if not command:
    return f"rebuild it with the data_prep command that built {dataset_dir}"
  if how.get("scope") == "dataset":  # these commands name absolute folders
    return f"rebuild the set: remove {dataset_dir} and run {command}"
  where = f" (from {cwd})" if cwd else ""  # the command's paths may be relative to where it ran
  return f"rebuild it: remove {file} and rerun {command}{where} (rewrites the missing shards only)"


def warn_unchecked(dataset_dir: str | os.PathLike) -> None:
  """The one-line warning for a set built before manifests (once per folder and process)."""
  key = os.fspath(dataset_dir)
  if key in _warned:
    return
  _warned.add(key)
  log.warning("%s has no %s (built before shard manifests): its shards' sizes and counts are not checked; "
              "python -m data_prep.verify --data_dir %s --write-manifest reads every record and adds one",
              key, MANIFEST, key)


def check_split(dataset_dir: str | os.PathLike, split: str) -> None:
  """Refuses (DamagedShardError, one line) a split whose shards are missing or differ from the manifest in size,
  or whose manifest counts differ from dataset_info.json's; warns once when the set has no manifest."""
  d = pathlib.Path(dataset_dir)
  manifest = read(d)
  if manifest is None:
    warn_unchecked(d)
    return
  listed = split_shards(d).get(split)
  if listed is None:
    return  # the reader names the missing split itself
  entries = manifest["splits"].get(split)
  if entries is None or len(entries) != len(listed):
    raise DamagedShardError(
        f"{d}: dataset_info.json lists {len(listed)} shard(s) of split {split!r}, {MANIFEST} "
        f"{0 if entries is None else len(entries)}: the metadata and the manifest are of different builds; "
        f"{rebuild_hint(manifest, d, d)}")
  problems = []
  for (path, records), entry in zip(listed, entries):
    what = _differs(path, records, entry)
    if what:
      problems.append((path, what))
  if problems:
    path, what = problems[0]
    more = (f" (and {len(problems) - 1} more shard(s) of {split!r}: python -m data_prep.verify --data_dir {d} "
            "lists them)") if len(problems) > 1 else ""
    raise DamagedShardError(f"damaged shard {path}: {what}; {rebuild_hint(manifest, d, path)}{more}")


def _differs(path: pathlib.Path, records: int, entry: dict[str, Any]) -> str | None:
  if entry.get("file") != path.name:
    return f"{MANIFEST} lists {entry.get('file')!r} in its place"
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    return "the file is missing"
  if size != int(entry["bytes"]):
    return f"{size} bytes, the manifest says {entry['bytes']} ({size_delta(size - int(entry['bytes']))})"
  if int(entry["records"]) != int(records):
    return f"dataset_info.json counts {records} records, the manifest {entry['records']}"
  return None


def size_delta(n: int) -> str:
  return f"{-n} bytes short: cut off" if n < 0 else f"{n} bytes too many"
