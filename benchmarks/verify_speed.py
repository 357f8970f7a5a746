"""data_prep.verify's throughput against `cat FILES > /dev/null` on the same shards, in one run; prints JSON.

  python benchmarks/verify_speed.py                          # 1 GiB in 16 shards of MP-16-sized records
  python benchmarks/verify_speed.py --mib 4096 --shards 48 --workers 2

The shards: TFDS-layout ArrayRecord files as the builders write them ("group_size:1", zstd), of tf.Examples
whose image bytes are random (incompressible, as JPEGs are) and sized like MP-16's stored photos and maps (short
side 320 px: ~30-60 KB a record), with the manifest a build writes. Two conditions, each the best of --repeats
passes, alternating verify and cat:
  cold: every shard dropped from the page cache first (posix_fadvise DONTNEED): read from the disk, as verify
        reads a set larger than memory (MP-16 is ~100 GB);
  warm: the shards in the page cache: the reference is memory speed, and verify's own work shows.
and two ways to verify: `verify` as it runs by default (checksum and record index of every shard; the records of
a shard are read when its checksum differs) and `verify --full` (every record of every shard read back too).
ratio = cat's seconds / verify's seconds (throughput of verify as a share of cat's). Goal: >= 0.7 (default mode).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from translocator_jax.data.build import verify  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.data.records import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_shards(out: pathlib.Path, mib: int, shards: int, seed: int = 0) -> list[pathlib.Path]:
  """Writes the benchmark set (reused when a complete one of the same size is there); returns its shard files."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  info_path = out / "dataset_info.json"
  if info_path.exists() and (out / manifest.MANIFEST).exists():
    info = json.loads(info_path.read_text())
    if info.get("mib") == mib and len(info["splits"][0]["shardLengths"]) == shards:
      return [p for p, _ in manifest.split_shards(out)["train"]]
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  per_shard = (mib << 20) // shards
  lengths, files = [], []
  for s in range(shards):
    path = out / f"verify_bench-train.array_record-{s:05d}-of-{shards:05d}"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    written = n = 0
    while written < per_shard:
      size = int(np.clip(rng.lognormal(np.log(40_000), 0.35), 8_000, 200_000))
      ex = tf_example_pb2.Example()
      f = ex.features.feature
      f["image"].bytes_list.value.append(rng.bytes(size))
      f["image_id"].bytes_list.value.append(f"bench/{s}/{n}".encode())
      data = ex.SerializeToString()
      writer.write(data)
      written += len(data)
      n += 1
    writer.close()
    lengths.append(n)
    files.append(path)
  info_path.write_text(json.dumps({
      "name": "verify_bench", "fileFormat": "array_record", "mib": mib,
      "splits": [{"name": "train", "shardLengths": [str(n) for n in lengths],
                  "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}))
  manifest.write_for(out, {"train": list(zip(files, lengths))}, command="benchmarks/verify_speed.py", scope="dataset")
  return files


def drop_from_cache(files) -> None:
  for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
      os.fsync(fd)  # dirty pages (a set just written) are not dropped
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def time_cat(files) -> float:
  t = time.perf_counter()
  subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
  return time.perf_counter() - t


def time_verify(out: pathlib.Path, workers: int, full: bool) -> float:
  t = time.perf_counter()
  report = verify.verify(out, workers=workers, progress=False, full=full)
  seconds = time.perf_counter() - t
  if report["bad"]:
    raise RuntimeError(verify.summary(report))
  return seconds


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mib", type=int, default=1024, help="size of the set")
  p.add_argument("--shards", type=int, default=16)
  p.add_argument("--workers", type=int, default=None, help="verify's worker processes (default: one per core)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dir", default=None, help="where to write the set (default: a temporary folder, removed)")
  a = p.parse_args(argv)
  workers = a.workers or os.cpu_count() or 1
  with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
    out = pathlib.Path(tmp) / "verify_bench"
    files = write_shards(out, a.mib, a.shards)
    total = sum(f.stat().st_size for f in files)
    result = {"bytes": total, "shards": len(files), "workers": workers, "cpus": os.cpu_count()}
    for cond in ("cold", "warm"):
      seconds = {"cat": [], "verify": [], "verify_full": []}
      for _ in range(a.repeats):
        for what in seconds:
          if cond == "cold":
            drop_from_cache(files)
          else:
            time_cat(files)  # into the cache
          seconds[what].append(time_cat(files) if what == "cat"
                               else time_verify(out, workers, full=what == "verify_full"))
      best = {k: min(v) for k, v in seconds.items()}
      result[cond] = {"cat_s": round(best["cat"], 4), "cat_mib_s": round(total / best["cat"] / 2 ** 20, 1)}
      for what in ("verify", "verify_full"):
        result[cond].update({f"{what}_s": round(best[what], 4),
                             f"{what}_mib_s": round(total / best[what] / 2 ** 20, 1),
                             f"{what}_ratio": round(best["cat"] / best[what], 3)})
    result["goal_ratio"] = 0.7
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
