"""accuracy_table (jitted JAX kernel) vs a straightforward numpy version of the same table, same process.

  .venv/bin/python benchmarks/accuracy_kernel.py [--n 10000000] [--repeats 5]

Prints one JSON object: best-of-repeats seconds and pairs/s for
  jax_s            accuracy_table on jax arrays (e.g. model outputs already on the device),
  jax_from_numpy_s accuracy_table on numpy arrays (includes copying them into XLA buffers),
  numpy_float32_s  accuracy_table_numpy in float32 (radians, sin/cos/arcsin, np.median),
and the speed-ups (best over best), plus the spread of the per-round ratios numpy / jax (min, median, max):
the runs are interleaved so that load from other processes hits all of them alike.
"""
import argparse
import json
import time

import jax
import numpy as np

from translocator_jax.geo.metrics import accuracy_table, accuracy_table_numpy


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=10_000_000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  z = rng.uniform(-1, 1, args.n)
  true = np.stack([np.degrees(np.arcsin(z)), rng.uniform(-180, 180, args.n)], 1).astype(np.float32)
  pred = true + rng.normal(0, 5, true.shape).astype(np.float32)
  pred[:, 0] = np.clip(pred[:, 0], -90, 90)
  pred[:, 1] = (pred[:, 1] + 180) % 360 - 180
  pred_j, true_j = jax.device_put(pred), jax.device_put(true)
  runs = {
      "jax_s": lambda: accuracy_table(pred_j, true_j),
      "jax_from_numpy_s": lambda: accuracy_table(pred, true),
      "numpy_float32_s": lambda: accuracy_table_numpy(pred, true, dtype=np.float32),
  }
  runs["jax_s"](), runs["jax_from_numpy_s"]()  # compile (numpy inputs arrive as another operand layout)
  best = {k: float("inf") for k in runs}
  out = {}
  rounds = []
  for _ in range(args.repeats):
    times = {}
    for name, fn in runs.items():
      t0 = time.perf_counter()
      out[name] = fn()
      times[name] = time.perf_counter() - t0
      best[name] = min(best[name], times[name])
    rounds.append(times)
  spread = lambda key: [round(float(q), 2) for q in np.quantile(
      [r["numpy_float32_s"] / r[key] for r in rounds], [0, 0.5, 1])]
  result = {"n_pairs": args.n, **{k: round(v, 4) for k, v in best.items()}}
  result.update(
      jax_pairs_per_s=round(args.n / best["jax_s"]), numpy_pairs_per_s=round(args.n / best["numpy_float32_s"]),
      speedup_vs_numpy=round(best["numpy_float32_s"] / best["jax_s"], 2),
      speedup_from_numpy_inputs=round(best["numpy_float32_s"] / best["jax_from_numpy_s"], 2),
      speedup_per_round_min_median_max=spread("jax_s"),
      speedup_from_numpy_inputs_per_round_min_median_max=spread("jax_from_numpy_s"),
      median_km=[out["jax_s"]["median_km"], out["numpy_float32_s"]["median_km"]],
      mean_km=[out["jax_s"]["mean_km"], out["numpy_float32_s"]["mean_km"]])
  print(json.dumps(result))


if __name__ == "__main__":
  main()
