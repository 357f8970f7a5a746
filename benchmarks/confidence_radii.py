"""Cost of the confidence radii on MP-16's fine partition (12,893 cells x 16 draws = 206,288 distances a photo).

  .venv/bin/python benchmarks/confidence_radii.py [--batch 64] [--rounds 3]
  .venv/bin/python benchmarks/confidence_radii.py --forward   # also the B/16 forward it sits beside

The reference, in the same process and interleaved round by round: the same radii by a full sort (argsort of the
distances, cumulative mass, search), the implementation geo/confidence.radii_km replaced. With --forward, also the
two-stream B/16 evaluation forward at 224 px (centre crop) on a batch of 8, to put the radii's cost per photo beside
the model's. Prints one JSON object: median ms per photo of each, `speedup_vs_sort` (median of per-round ratios),
`share_of_forward`, and how often the two radii differ (a crossing that float32 sums cannot tell apart moves the
pick to a neighbouring distance) and by how much.
"""
import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax import paths
from translocator_jax.geo import cells, confidence, distance


@jax.jit
def radii_by_sort(cell_probs, centre, points, temperatures):
  """The sort-based radii: the reference."""
  b, c = cell_probs.shape
  m = points.shape[1]
  pts = points.reshape(1, c * m, 2)
  d = distance.haversine_km(jnp.broadcast_to(centre[:, None, :], (b, c * m, 2)), jnp.broadcast_to(pts, (b, c * m, 2)))
  order = jnp.argsort(d, axis=1)
  d_sorted = jnp.take_along_axis(d, order, axis=1)
  out = []
  for i, q in enumerate(confidence.QUANTILES):
    weights = jnp.repeat(confidence.tempered(cell_probs, temperatures[i]), m, axis=1)
    mass = jnp.cumsum(jnp.take_along_axis(weights, order, axis=1), axis=1)
    at = jax.vmap(lambda cm, q=q: jnp.searchsorted(cm, q * cm[-1]))(mass)
    out.append(jnp.take_along_axis(d_sorted, jnp.minimum(at, c * m - 1)[:, None], axis=1)[:, 0])
  return jnp.stack(out, axis=1)


def b16_forward(batch: int = 8):
  """A callable running the two-stream B/16 evaluation forward (MP-16's heads) on one batch, and the batch size."""
  from translocator_jax import models  # pylint: disable=g-import-not-at-top
  from translocator_jax.runtime import config_schema  # pylint: disable=g-import-not-at-top
  heads = {"coarse": 3298, "middle": 7202, "fine": 12893, "scene": 3}
  model = models.build_model(config_schema.complete_section(
      "model", dict(variant="B/16", image_size=224, heads=heads, fusion="cls_sum")))
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(batch, 224, 224, 3)).astype(np.float32))
  seg = jnp.asarray(rng.normal(size=(batch, 224, 224, 3)).astype(np.float32))
  params = jax.jit(model.init)(jax.random.key(0), image, seg)["params"]
  infer = jax.jit(lambda p, image, seg: model.apply({"params": p}, image, seg))
  return lambda: infer(params, image, seg), batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--forward", action="store_true", help="also time the B/16 forward (about a minute more)")
  parser.add_argument("--partition", default=None, help="default: ../shared/data/partitions/cells_50_1000.csv")
  args = parser.parse_args()
  part = cells.load_partition_csv(args.partition or paths.shared_data_dir() / "partitions" / "cells_50_1000.csv")
  points = jnp.asarray(confidence.cell_points(part.latlon_mean, part.cell_spread_km()))
  rng = np.random.default_rng(0)
  # Peaked like a trained model's output: a few cells near the answer hold most of the mass, the rest is a tail.
  logits = rng.gumbel(size=(args.batch, part.num_classes)).astype(np.float32) * 2.0
  probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  centre = jnp.asarray(part.latlon_mean[np.asarray(jnp.argmax(probs, axis=1))], jnp.float32)
  temperatures = jnp.asarray((0.7, 1.5), jnp.float32)  # the Earth demo's fitted pair
  ours = lambda: confidence.radii_km(probs, centre, points, temperatures)
  reference = lambda: radii_by_sort(probs, centre, points, temperatures)
  runs = {"radix": (ours, args.batch), "sort": (reference, args.batch)}
  if args.forward:
    runs["forward"] = b16_forward()

  def per_photo_ms(fn, n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t) / n * 1e3

  for fn, n in runs.values():
    jax.block_until_ready(fn())  # compile
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, (fn, n) in runs.items():
      times[name].append(per_photo_ms(fn, n))
  a, b = np.asarray(ours()), np.asarray(reference())
  result = {
      "backend": jax.default_backend(), "cpus": os.cpu_count(), "cells": part.num_classes,
      "distances_per_photo": int(points.shape[0] * points.shape[1]), "batch": args.batch, "rounds": args.rounds,
      "radix_ms_per_photo": round(statistics.median(times["radix"]), 2),
      "sort_ms_per_photo": round(statistics.median(times["sort"]), 2),
      "speedup_vs_sort": round(statistics.median(s / r for s, r in zip(times["sort"], times["radix"])), 2),
      "radii_differing": int((a != b).sum()), "radii_compared": int(a.size),
      "max_difference_km": round(float(np.abs(a - b).max()), 3),
  }
  if args.forward:
    result["forward_ms_per_photo"] = round(statistics.median(times["forward"]), 1)
    result["share_of_forward"] = round(statistics.median(r / f for r, f in zip(times["radix"], times["forward"])), 3)
    result["sort_share_of_forward"] = round(
        statistics.median(s / f for s, f in zip(times["sort"], times["forward"])), 3)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
