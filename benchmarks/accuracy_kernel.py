"""accuracy_table (jitted JAX kernel) vs a straightforward numpy version of the same table, same process.

  .venv/bin/python benchmarks/accuracy_kernel.py [--n 10000000] [--repeats 3]

Prints one JSON object: seconds (best of repeats) and pairs/s of both, and the speed-up ratio.
"""
import argparse
import json
import time

import numpy as np

from translocator_jax.geo.metrics import accuracy_table, accuracy_table_numpy


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return min(times), out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=10_000_000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  z = rng.uniform(-1, 1, args.n)
  true = np.stack([np.degrees(np.arcsin(z)), rng.uniform(-180, 180, args.n)], 1).astype(np.float32)
  pred = true + rng.normal(0, 5, true.shape).astype(np.float32)
  pred[:, 0] = np.clip(pred[:, 0], -90, 90)
  pred[:, 1] = (pred[:, 1] + 180) % 360 - 180
  accuracy_table(pred, true)  # compile
  t_jax, got = _best(lambda: accuracy_table(pred, true), args.repeats)
  t_np, ref = _best(lambda: accuracy_table_numpy(pred, true, dtype=np.float32), args.repeats)
  print(json.dumps({
      "n_pairs": args.n, "jax_s": round(t_jax, 4), "numpy_float32_s": round(t_np, 4),
      "jax_pairs_per_s": round(args.n / t_jax), "numpy_pairs_per_s": round(args.n / t_np),
      "speedup_vs_numpy": round(t_np / t_jax, 2),
      "median_km": [got["median_km"], ref["median_km"]], "mean_km": [got["mean_km"], ref["mean_km"]],
  }))


if __name__ == "__main__":
  main()
