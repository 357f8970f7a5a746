"""Build the three S2 partitions (GeoEstimation CSV layout) from a dataset's training coordinates.

  .venv/bin/python data_prep/build_partitions.py --input mp16_places365.csv --out_dir partitions/
  .venv/bin/python data_prep/build_partitions.py --input /data/tfds/mp16/1.0.0 --split train --out_dir p/

Input: a CSV with LAT and LON columns, or a TFDS dataset directory whose records hold `latlon`.
Writes cells_{tau_min}_{tau_max}.csv for tau_max in --tau_max (default 5000, 2000, 1000).
"""
import argparse
import csv
import pathlib

import numpy as np
import tqdm

from translocator_jax.geo import build_partition, write_partition_csv


def read_latlon(path: pathlib.Path, split: str) -> np.ndarray:
  if path.is_dir():
    import tensorflow_datasets as tfds  # reading ArrayRecord shards needs no TensorFlow
    source = tfds.builder_from_directory(str(path)).as_data_source(split)
    return np.array([source[i]["latlon"] for i in tqdm.trange(len(source), desc="coordinates")], np.float64)
  with path.open(newline="") as f:
    reader = csv.DictReader(f)
    if not {"LAT", "LON"} <= set(reader.fieldnames or []):
      raise ValueError(f"{path}: needs LAT and LON columns, has {reader.fieldnames}")
    return np.array([(float(r["LAT"]), float(r["LON"])) for r in tqdm.tqdm(reader, desc="coordinates")])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", type=pathlib.Path, required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--out_dir", type=pathlib.Path, required=True)
  parser.add_argument("--tau_min", type=int, default=50)
  parser.add_argument("--tau_max", type=int, nargs="+", default=[5000, 2000, 1000])
  args = parser.parse_args()
  latlon = read_latlon(args.input, args.split)
  for tau_max in tqdm.tqdm(args.tau_max, desc="partitions"):
    p = build_partition(latlon, args.tau_min, tau_max)
    out = args.out_dir / f"cells_{args.tau_min}_{tau_max}.csv"
    write_partition_csv(p, out)
    print(f"{out}: {p.num_classes} classes, {int(p.counts.sum())} of {len(latlon)} coordinates assigned")


if __name__ == "__main__":
  main()
