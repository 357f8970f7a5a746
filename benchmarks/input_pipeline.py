"""Training input pipeline speed against raw JPEG decoding of the same records, in one run; prints JSON.

  python benchmarks/input_pipeline.py --photos 1024 --image-size 224 --records 512 --repeats 5   # MP-16-like records
  python benchmarks/input_pipeline.py --image-size 48 --batch-size 128 --seg-input classes \
      --records 4096 --repeats 5                                          # Earth patches as configs/earth_demo.py
  python benchmarks/input_pipeline.py --patch-px 256 --num-train 2000 --image-size 224
  python benchmarks/input_pipeline.py --dataset-dir DIR --split train     # any built TFDS dataset of the schema

Reference ("raw JPEG decode"): what a plain reader does with the same records in the same process: read each
record from the ArrayRecord shards (sources.open_source(decode=False): protobuf parse) and decode its JPEG with
`np.asarray(Image.open(...).convert("RGB"))`, one thread. For context also: the same plus the PNG map
(`raw_jpeg_and_png_decode`), and the lean decoders the pipeline uses (codecs.decode_rgb / decode_gray).
Pipeline: pipeline.train_loader over the same records as the trainer runs it (decode photo and map, random
resized crop + flip of both, batch: uint8 batches that the jitted train step normalises and colours,
data/pipeline/device_finish.py); in this process with no
reader threads ("per worker" speed), then with grain worker processes, also without reader threads (images/s
divided by workers). Passes of the reference,
the lean decoders and the in-process pipeline are interleaved and the best pass of each is kept (the machine may
be shared: the best pass is the least disturbed); worker pipelines run after them, their first pass (worker
buffers filled while idle) is not counted. Every figure is also given per CPU second of the process and its
workers (from /proc): on a busy machine that is the steadier measure of the work an image costs.
Target: per-worker pipeline speed >= 70% of raw JPEG decode speed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import photo_records  # pylint: disable=g-import-not-at-top,wrong-import-position

from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.earth_patches import plan as earth_plan
from translocator_jax.data.pipeline import training as pipeline
from translocator_jax.data.records import codecs  # pylint: disable=wrong-import-position
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources

TARGET_RATIO = 0.7


class Subset:
  """The first n records of a source (picklable when the source is)."""

  def __init__(self, source, n: int):
    self.source = source
    self.n = min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[i]

  @property
  def decode(self):
    return getattr(self.source, "decode", False)

  def undecoded(self):  # lets train_loader read the records undecoded, as it does with the full source
    return Subset(self.source.undecoded(), self.n)


def descendants_cpu_seconds() -> float:
  """CPU seconds (user + system, all threads) of this process's descendants (grain workers), from /proc."""
  root = os.getpid()
  ticks = os.sysconf("SC_CLK_TCK")
  parent, cpu = {}, {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    parent[int(name)], cpu[int(name)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
  total, todo = 0.0, [child for child, par in parent.items() if par == root]
  while todo:
    pid = todo.pop()
    total += cpu.get(pid, 0.0)
    todo += [child for child, par in parent.items() if par == pid]
  return total


def _timed(fn, n: int, workers: bool = False) -> tuple[float, float]:
  """(items per wall-clock second, items per CPU second of this process (and its workers)) of one call of fn."""
  c0 = descendants_cpu_seconds() if workers else 0.0
  p0, t0 = time.process_time(), time.perf_counter()
  fn()
  wall, cpu = time.perf_counter() - t0, time.process_time() - p0
  if workers:
    cpu += descendants_cpu_seconds() - c0
  return n / wall, n / max(cpu, 1e-9)


def decode_passes(raw_source, n: int):
  """Pass functions over the first n records: plain JPEG, plain JPEG + PNG, lean JPEG + PNG (the pipeline's)."""
  def plain(with_seg):
    def run():
      for i in range(n):
        ex = raw_source[i]
        np.asarray(Image.open(io.BytesIO(ex[schema.IMAGE])).convert("RGB"))
        if with_seg:
          np.asarray(Image.open(io.BytesIO(ex[schema.SEGMENTATION])))
    return run

  def lean():
    for i in range(n):
      ex = raw_source[i]
      codecs.decode_rgb(ex[schema.IMAGE])
      codecs.decode_gray(ex[schema.SEGMENTATION])
  return {"raw_jpeg_decode": plain(False), "raw_jpeg_and_png_decode": plain(True), "lean_jpeg_and_png_decode": lean}


def make_loader(dataset_dir: str, split: str, n: int, args, palette, workers: int):
  src = Subset(sources.open_source(dataset_dir, split), n)
  return pipeline.train_loader(src, batch_size=args.batch_size, image_size=args.image_size,
                               seg_input=args.seg_input, palette=palette, seed=0, shard_index=0, shard_count=1,
                               num_epochs=None, worker_count=workers, num_threads=0,
                               antialias=not args.no_antialias)


def pipeline_pass(it, steps: int, batch_size: int):
  def run():
    for _ in range(steps):
      next(it)
  return run, steps * batch_size


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset-dir", help="a built TFDS dataset dir (default: build / find earth_patches)")
  p.add_argument("--photos", type=int, help="write and use this many photo-like records (benchmarks/photo_records)")
  p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "translocator_bench_tfds"),
                 help="TFDS data dir for earth_patches; photo-like records go to DATA_DIR/photo_like_N")
  p.add_argument("--config", default="default", choices=sorted(earth_plan.PRESETS))
  p.add_argument("--patch-px", type=int)
  p.add_argument("--num-train", type=int)
  p.add_argument("--split", default="train")
  p.add_argument("--records", type=int, default=1024)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--image-size", type=int, help="model input side (default: 2/3 of the stored short side)")
  p.add_argument("--seg-input", default="palette", choices=("palette", "classes"))
  p.add_argument("--no-antialias", action="store_true", help="train_loader(antialias=False)")
  p.add_argument("--workers", default="0,2", help="comma-separated worker counts to measure")
  p.add_argument("--repeats", type=int, default=3, help="passes per measurement; the best is reported")
  args = p.parse_args(argv)

  palette = None
  if args.photos:
    dataset_dir = str(photo_records.write_photo_records(os.path.join(args.data_dir, f"photo_like_{args.photos}"),
                                                        args.photos))
  elif args.dataset_dir:
    dataset_dir = args.dataset_dir
  else:
    overrides = {k: v for k, v in (("patch_px", args.patch_px), ("num_train", args.num_train)) if v is not None}
    info = earth_patches.ensure_built(args.data_dir, args.config, **overrides)
    dataset_dir, palette = str(info.data_dir), info.palette
  if palette is None:
    palette = np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8)
  raw_source = sources.open_source(dataset_dir, args.split, decode=False)
  n = min(args.records, len(raw_source))
  sizes = [codecs.image_size(raw_source[i][schema.IMAGE]) for i in range(min(n, 64))]
  side = int(np.median([min(s) for s in sizes]))
  args.image_size = args.image_size or max(8, side * 2 // 3)
  for i in range(n):  # warm the file cache
    raw_source[i]

  passes = decode_passes(raw_source, n)
  wall = {k: 0.0 for k in passes}
  cpu = {k: 0.0 for k in passes}

  def keep(name, rates):
    wall[name], cpu[name] = max(wall.get(name, 0.0), rates[0]), max(cpu.get(name, 0.0), rates[1])

  worker_counts = [int(x) for x in args.workers.split(",") if x != ""]
  steps = max(n // args.batch_size, 1)
  in_process = None
  if 0 in worker_counts:
    it0 = iter(make_loader(dataset_dir, args.split, n, args, palette, 0))
    next(it0)
    in_process = pipeline_pass(it0, steps, args.batch_size)
  for _ in range(args.repeats):
    for k, fn in passes.items():
      keep(k, _timed(fn, n))
    if in_process is not None:
      keep("pipeline_workers_0", _timed(*in_process))
  for w in worker_counts:
    if w == 0:
      continue
    it = iter(make_loader(dataset_dir, args.split, n, args, palette, w))
    for _ in range(2 * w + 2):  # start-up: worker processes, first reads
      next(it)
    run, count = pipeline_pass(it, steps, args.batch_size)
    for r in range(args.repeats + 1):
      rates = _timed(run, count, workers=True)
      if r:  # the first pass starts with full worker buffers
        keep(f"pipeline_workers_{w}", rates)
    if hasattr(it, "close"):
      it.close()

  raw, raw_cpu = wall["raw_jpeg_decode"], cpu["raw_jpeg_decode"]
  result = {
      "dataset_dir": dataset_dir, "split": args.split, "records": n, "stored_short_side_px": side,
      "mean_jpeg_bytes": int(np.mean([len(raw_source[i][schema.IMAGE]) for i in range(min(n, 64))])),
      "mean_png_bytes": int(np.mean([len(raw_source[i][schema.SEGMENTATION]) for i in range(min(n, 64))])),
      "image_size": args.image_size, "batch_size": args.batch_size, "seg_input": args.seg_input,
      "antialias": not args.no_antialias, "opencv": codecs.cv2 is not None,
      "cpu_count": os.cpu_count(),
      "load_average": [round(x, 2) for x in os.getloadavg()],
      "images_per_s": {k: round(v, 1) for k, v in wall.items() if not k.startswith("pipeline")},
      "images_per_cpu_s": {k: round(v, 1) for k, v in cpu.items() if not k.startswith("pipeline")},
      "pipeline": {}, "target_ratio": TARGET_RATIO,
  }
  for w in worker_counts:
    name = f"pipeline_workers_{w}"
    per_worker = wall[name] / max(w, 1)
    result["pipeline"][f"workers={w}"] = {
        "images_per_s": round(wall[name], 1), "images_per_s_per_worker": round(per_worker, 1),
        "ratio_to_raw_jpeg_decode": round(per_worker / raw, 3),
        "ratio_to_raw_jpeg_and_png_decode": round(per_worker / wall["raw_jpeg_and_png_decode"], 3),
        "meets_target": per_worker / raw >= TARGET_RATIO,
        # Per CPU second of this process and its workers: what a worker gets done with a whole core (the wall-clock
        # figure with several workers also measures how many cores the machine has free).
        "images_per_cpu_s": round(cpu[name], 1), "cpu_ratio_to_raw_jpeg_decode": round(cpu[name] / raw_cpu, 3)}
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
