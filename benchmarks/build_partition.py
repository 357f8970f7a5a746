"""build_partition on N synthetic coordinates (clustered like photo locations); vectorised leaf ids vs s2sphere.

  .venv/bin/python benchmarks/build_partition.py [--n 5000000]

Prints one JSON object: build seconds for the three MP-16 thresholds, class counts, and the leaf-id speed of
the numpy path against s2sphere's per-point python (measured on a subset, same process).
"""
import argparse
import json
import time

import numpy as np
import s2sphere

from translocator_jax.geo import build_partition
from translocator_jax.geo.cells import leaf_cell_ids


def synthetic_latlon(n, rng):
  centres = np.stack([rng.uniform(-50, 65, 2000), rng.uniform(-180, 180, 2000)], 1)
  weight = rng.pareto(1.2, 2000) + 1
  idx = rng.choice(2000, n, p=weight / weight.sum())
  latlon = centres[idx] + rng.normal(0, 1, (n, 2)) * rng.exponential(0.5, (n, 1))
  latlon[:, 0] = np.clip(latlon[:, 0], -90, 90)
  latlon[:, 1] = (latlon[:, 1] + 180) % 360 - 180
  return latlon


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=5_000_000)
  args = parser.parse_args()
  latlon = synthetic_latlon(args.n, np.random.default_rng(0))
  out = {"n": args.n}
  for tau_max in (5000, 2000, 1000):
    t0 = time.perf_counter()
    p = build_partition(latlon, 50, tau_max)
    out[f"build_50_{tau_max}_s"] = round(time.perf_counter() - t0, 2)
    out[f"classes_50_{tau_max}"] = p.num_classes
  sub = latlon[:20_000]
  t0 = time.perf_counter()
  for a, b in sub:
    s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b))
  t_s2 = time.perf_counter() - t0
  t0 = time.perf_counter()
  leaf_cell_ids(sub)
  t_np = time.perf_counter() - t0
  out.update(leaf_ids_s2sphere_per_s=round(len(sub) / t_s2), leaf_ids_numpy_per_s=round(len(sub) / t_np),
             leaf_ids_speedup=round(t_s2 / t_np, 1))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
