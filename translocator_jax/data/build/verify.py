"""`python -m data_prep.verify --data_dir DIR [--name NAME] [--full]`: every shard of the built datasets under DIR
checked byte by byte against its manifest, its records read back where that can tell more.

For each shard, in parallel worker processes (one shard a task, the largest first):
  * its size and its xxh3_64 checksum against the manifest (records/manifest.py) the build wrote;
  * its ArrayRecord index (the footer, one entry per record; riegeli checks its hashes): readable, and the record
    count the same as the manifest's and dataset_info.json's;
  * every record read back (riegeli checks each chunk's header and data hashes as it reads) and each one's header
    looked at (a tf.Example starts with its `features` field) when the checksum differs, when the set has no
    manifest, or with --full. A matching checksum says the file holds the bytes the build wrote and counted, so
    reading its records again tells nothing more and would cost ~10x the time (benchmarks/verify_speed.py);
    a damaged chunk names its records, and the records after it are still read.
Decoding the images is left out: the checksum already says whether the bytes are the ones the build wrote.

DIR is a TFDS data dir (every folder under it holding a dataset_info.json is checked; --name NAME: those under
DIR/NAME) or one dataset folder. Exit status 0 when every shard is sound, 1 with the list of bad shards (file,
what is wrong, the command that rebuilds it), 2 when nothing could be checked (no dataset there, bad arguments).
A set built before manifests gets its records read and its counts checked; --write-manifest then adds the
manifest, when every record read back.
"""
from __future__ import annotations

from concurrent import futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import time
from typing import Any, Sequence

from tqdm import tqdm

from translocator_jax.data.records import manifest

_BATCH = 1024         # records a reader call returns
_MAX_NAMED = 20       # bad records named a shard (the rest are counted)
_EXAMPLE_TAG = b"\n"  # a serialized tf.Example begins with field 1 (features), length-delimited: 0x0a


@dataclasses.dataclass(frozen=True)
class ShardTask:
  path: str
  split: str
  dataset_dir: str
  records: int                        # what dataset_info.json counts
  expected: dict[str, Any] | None     # the manifest's entry (None: a set built before manifests)
  full: bool = False                  # read every record even when the checksum matches


def find_datasets(data_dir: str | os.PathLike, name: str | None = None) -> list[pathlib.Path]:
  """The built dataset folders (holding dataset_info.json) at or under DIR[/NAME]; FileNotFoundError if none."""
  root = pathlib.Path(data_dir).expanduser()
  if (root / "dataset_info.json").is_file():
    return [root]
  base = root / name if name else root
  if not base.is_dir():
    raise FileNotFoundError(f"{base}: no such folder")
  if (base / "dataset_info.json").is_file():
    return [base]
  found = sorted(p.parent for p in base.rglob("dataset_info.json")
                 if not any(part.startswith(("incomplete.", "_staging")) for part in p.relative_to(base).parts))
  if not found:
    raise FileNotFoundError(f"no built dataset under {base} (no folder with a dataset_info.json)")
  return found


def array_record_sets(datasets: Sequence[pathlib.Path]) -> tuple[list[pathlib.Path], list[str]]:
  """(the sets stored as ArrayRecord, a note for each other one: other TFDS sets in the same data dir are left)."""
  kept, notes = [], []
  for d in datasets:
    fmt = json.loads((d / "dataset_info.json").read_text()).get("fileFormat", "tfrecord")
    if fmt == "array_record":
      kept.append(d)
    else:
      notes.append(f"{d}: stored as {fmt}, not ArrayRecord: not checked")
  return kept, notes


def plan(datasets: Sequence[pathlib.Path], full: bool = False) -> tuple[list[ShardTask], dict[str, dict | None]]:
  """(a task per shard, {dataset dir: its manifest or None}); a manifest that does not match dataset_info.json's
  shard list is a DamagedShardError (the folder mixes builds)."""
  tasks, manifests = [], {}
  for d in datasets:
    m = manifest.read(d)
    manifests[str(d)] = m
    for split, shards in manifest.split_shards(d).items():
      entries = None if m is None else m["splits"].get(split)
      if m is not None and (entries is None or len(entries) != len(shards)):
        raise manifest.DamagedShardError(
            f"{d}: dataset_info.json lists {len(shards)} shard(s) of split {split!r}, {manifest.MANIFEST} "
            f"{0 if entries is None else len(entries)}; {manifest.rebuild_hint(m, d, d)}")
      for k, (path, n) in enumerate(shards):
        tasks.append(ShardTask(os.fspath(path), split, str(d), n, None if entries is None else entries[k], full))
  return tasks, manifests


def check_shard(task: ShardTask) -> dict[str, Any]:
  """What is wrong with one shard (worker side): {"file", "bytes", "records", "checksum", "problems",
  "bad_records": [(record, reason)], "bad_count"}."""
  path = pathlib.Path(task.path)
  out = {"file": task.path, "split": task.split, "dataset_dir": task.dataset_dir, "bytes": 0, "records": 0,
         "checksum": None, "problems": [], "bad_records": [], "bad_count": 0}
  problems = out["problems"]
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    problems.append("the file is missing")
    return out
  out["bytes"] = size
  exp = task.expected
  if exp is not None and size != int(exp["bytes"]):
    delta = manifest.size_delta(size - int(exp["bytes"]))
    problems.append(f"{size} bytes, the manifest says {exp['bytes']} ({delta})")
  out["checksum"] = manifest.checksum(path)
  if exp is not None and out["checksum"] != exp.get(manifest.CHECKSUM):
    problems.append(f"checksum {out['checksum']}, the manifest says {exp.get(manifest.CHECKSUM)}: its bytes "
                    "changed since the build")
  out["records_read"] = task.full or exp is None or bool(problems)
  _read_records(task, out, every_record=out["records_read"])
  return out


def _read_records(task: ShardTask, out: dict[str, Any], every_record: bool) -> None:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  try:
    reader = array_record_module.ArrayRecordReader(task.path, "readahead_buffer_size:0,max_parallelism:0")
  except (RuntimeError, OSError, ValueError) as e:
    out["problems"].append(f"not an ArrayRecord file ({_one_line(e)})")
    return
  try:
    if not reader.ok():
      out["problems"].append("its ArrayRecord footer (the record index) cannot be read: the file is cut short or "
                             "damaged at its end")
      return
    n = int(reader.num_records())
    out["records"] = n
    wanted = {"dataset_info.json": task.records}
    if task.expected is not None:
      wanted[manifest.MANIFEST] = int(task.expected["records"])
    for where, count in wanted.items():
      if count != n:
        out["problems"].append(f"{n} records, {where} counts {count}")
    if not every_record:
      return
    bad = []
    for start in range(0, n, _BATCH):
      indices = list(range(start, min(n, start + _BATCH)))
      try:
        records = reader.read(indices)
      except (RuntimeError, OSError, ValueError):
        records = None
      if records is None:  # one by one: which of them are damaged, and the rest still read
        for i in indices:
          try:
            rec = reader.read([i])[0]
          except (RuntimeError, OSError, ValueError) as e:
            bad.append((i, f"cannot be read ({_one_line(e)})"))
            continue
          if rec[:1] != _EXAMPLE_TAG:
            bad.append((i, "not a tf.Example"))
        continue
      for i, rec in zip(indices, records):
        if rec[:1] != _EXAMPLE_TAG:
          bad.append((i, "not a tf.Example"))
    if bad:
      out["bad_count"] = len(bad)
      out["bad_records"] = bad[:_MAX_NAMED]
      named = ", ".join(f"{i} ({why})" for i, why in bad[:3])
      out["problems"].append(f"{len(bad)} of {n} records unreadable: record {named}"
                             + (" ..." if len(bad) > 3 else ""))
  finally:
    _close(reader)


def _close(reader) -> None:
  try:
    reader.close()
  except (RuntimeError, OSError, ValueError):
    pass  # a damaged file's reader reports its error again on close: already listed


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:300]


def _pool(workers: int) -> futures.ProcessPoolExecutor:
  # fork: the workers need nothing this process loaded beyond the standard library, xxhash and array_record (no
  # TensorFlow, no JAX backend), and start in milliseconds where spawn re-imports the command. An executor, not a
  # multiprocessing.Pool: a worker that dies (a shard cut short while it is mapped) fails the run, not hangs it.
  method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
  return futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def verify(data_dir: str | os.PathLike, name: str | None = None, *, workers: int | None = None,
           progress: bool = True, full: bool = False) -> dict[str, Any]:
  """Checks every shard under data_dir[/name] (full: read every record of every shard); returns {"datasets", "shards": [check_shard results], "bad",
  "bytes", "records", "seconds", "workers", "manifests"}."""
  datasets, notes = array_record_sets(find_datasets(data_dir, name))
  tasks, manifests = plan(datasets, full)
  workers = max(1, min(int(workers or os.cpu_count() or 1), len(tasks) or 1))
  tasks.sort(key=lambda t: -_size(t.path))  # the largest first: no long shard left for the end
  start = time.perf_counter()
  results = []
  with tqdm(total=sum(_size(t.path) for t in tasks), unit="B", unit_scale=True, desc="verify",
            disable=not progress) as bar:
    if workers > 1:
      with _pool(workers) as pool:
        for done in futures.as_completed([pool.submit(check_shard, t) for t in tasks]):
          results.append(done.result())
          bar.update(results[-1]["bytes"])
    else:
      for t in tasks:
        results.append(check_shard(t))
        bar.update(results[-1]["bytes"])
  seconds = time.perf_counter() - start
  results.sort(key=lambda r: r["file"])
  bad = [r for r in results if r["problems"]]
  for r in bad:
    r["rebuild"] = manifest.rebuild_hint(manifests[r["dataset_dir"]], r["dataset_dir"], r["file"])
  return {"datasets": [str(d) for d in datasets], "shards": results, "bad": bad, "manifests": manifests,
          "notes": notes,
          "bytes": sum(r["bytes"] for r in results), "records": sum(r["records"] for r in results),
          "seconds": seconds, "workers": workers}


def _size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError:
    return 0


def write_missing_manifests(report: dict[str, Any]) -> list[str]:
  """Adds shards.json to each verified set that had none and whose shards all read back whole; returns them."""
  written = []
  for d in report["datasets"]:
    if report["manifests"][d] is not None:
      continue
    shards = [r for r in report["shards"] if r["dataset_dir"] == d]
    if any(r["problems"] for r in shards):
      continue
    entries: dict[str, list] = {}
    for r in shards:
      entries.setdefault(r["split"], []).append(
          {"file": os.path.basename(r["file"]), "bytes": r["bytes"], "records": r["records"],
           manifest.CHECKSUM: r["checksum"]})
    order = {split: [p.name for p, _ in files] for split, files in manifest.split_shards(d).items()}
    for split, items in entries.items():
      items.sort(key=lambda e, o=order[split]: o.index(e["file"]))
    manifest.write(d, entries, command="", scope="dataset")
    written.append(d)
  return written


def summary(report: dict[str, Any]) -> str:
  """The closing screen: totals, each dataset's state, then each bad shard on its own line."""
  mib = report["bytes"] / 2 ** 20
  rate = mib / report["seconds"] if report["seconds"] > 0 else float("nan")
  read = sum(r["records"] for r in report["shards"] if r.get("records_read"))
  lines = [f"verified {len(report['datasets'])} dataset(s): {len(report['shards'])} shard(s), "
           f"{report['records']} records ({read} read back), {mib:.1f} MiB in {report['seconds']:.1f} s ({rate:.0f} MiB/s, "
           f"{report['workers']} worker(s))"]
  for d in report["datasets"]:
    shards = [r for r in report["shards"] if r["dataset_dir"] == d]
    n_bad = sum(1 for r in shards if r["problems"])
    state = f"{n_bad} bad shard(s)" if n_bad else "ok"
    if report["manifests"][d] is None:
      state += (f"; no {manifest.MANIFEST} (built before manifests): records read, checksums not compared "
                "(--write-manifest adds one)")
    lines.append(f"  {d}: {len(shards)} shard(s), {sum(r['records'] for r in shards)} records: {state}")
  lines += [f"  {note}" for note in report.get("notes", [])]
  if report["bad"]:
    lines.append(f"bad shards ({len(report['bad'])}):")
    lines += [f"  {r['file']}: {'; '.join(r['problems'])}; {r['rebuild']}" for r in report["bad"]]
  return "\n".join(lines)
