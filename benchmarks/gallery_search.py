"""eval.search over a 1M-item gallery: queries/s and the share of this machine's matmul rate it reaches.

  .venv/bin/python benchmarks/gallery_search.py [--items 1000000] [--dim 768] [--queries 256] [--k 100]
  XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/python benchmarks/gallery_search.py  # sharded

The reference, in the same process and interleaved with the search: the same similarity matmuls alone (queries
[Q, D] @ gallery chunk [chunk, D]^T over every chunk, jitted, result reduced to a scalar so nothing is copied
out) and one large square float32 matmul (the machine's matmul rate). Prints one JSON object: best-of-repeats
seconds, queries/s, GFLOP/s, `share_of_matmul_rate` (search GFLOP/s over the square matmul's) and
`share_of_chunk_matmuls` (the same over the bare chunked matmuls: what the top-k selection and merge cost).
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.infer import search


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--items", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=768, help="B/16's pre-logits")
  parser.add_argument("--queries", type=int, default=256)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--chunk", type=int, default=search.CHUNK)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  gallery = rng.standard_normal((args.items, args.dim), dtype=np.float32)
  gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
  queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  placed = search.put_gallery(gallery, chunk=args.chunk)
  del gallery
  q = jnp.asarray(queries)

  emb = placed.embeddings

  @jax.jit
  def chunk_matmuls(q, emb):
    chunks = emb.reshape(-1, placed.chunk, emb.shape[1])
    def body(acc, e):
      return acc + jnp.sum(q @ e.T), None
    return jax.lax.scan(body, jnp.float32(0), chunks)[0]

  side = 2048
  a = jnp.asarray(rng.standard_normal((side, side), dtype=np.float32))
  square = jax.jit(lambda a: a @ a)

  runs = {
      "search_s": lambda: jax.block_until_ready(search.search(placed, q, args.k)),
      "chunk_matmuls_s": lambda: jax.block_until_ready(chunk_matmuls(q, emb)),
      "square_matmul_s": lambda: jax.block_until_ready(square(a)),
  }
  for fn in runs.values():
    fn()  # compile
  best = {k: float("inf") for k in runs}
  for _ in range(args.repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t0)
  flops = 2.0 * args.queries * placed.embeddings.shape[0] * args.dim
  search_gflops = flops / best["search_s"] / 1e9
  matmul_gflops = 2.0 * side ** 3 / best["square_matmul_s"] / 1e9
  chunk_gflops = flops / best["chunk_matmuls_s"] / 1e9
  print(json.dumps({
      "backend": jax.default_backend(), "devices": jax.device_count(), "items": args.items, "dim": args.dim,
      "queries": args.queries, "k": args.k, "chunk": placed.chunk,
      **{k: round(v, 4) for k, v in best.items()},
      "queries_per_s": round(args.queries / best["search_s"], 1),
      "search_gflops": round(search_gflops, 1), "matmul_gflops": round(matmul_gflops, 1),
      "share_of_matmul_rate": round(search_gflops / matmul_gflops, 3),
      "share_of_chunk_matmuls": round(search_gflops / chunk_gflops, 3),
  }))


if __name__ == "__main__":
  main()
