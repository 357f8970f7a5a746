"""The attention implementations of config.model.attention against each other: values, gradients and speed; JSON.

  python benchmarks/attention_impls.py                                 # B/16 shapes, bfloat16, batch 256
  python benchmarks/attention_impls.py --impls xla --dtype float32     # CPU: the XLA path alone

One ViT attention layer (MultiHeadDotProductAttention, checkpoint-layout params) with the same params and input
under each implementation: forward output and input gradient against the first implementation (max abs diff,
relative to the reference's max abs), and forward+backward time (median of --iters, after a compile and a warm-up
run). 'cudnn' needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--impls", default="xla,cudnn")
  p.add_argument("--width", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--tokens", type=int, default=197)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--iters", type=int, default=20)
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from translocator_jax.models import layers as vit_layers  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (args.batch, args.tokens, args.width), jnp.float32)
  dy = jax.random.normal(jax.random.key(1), x.shape, jnp.float32)
  impls = args.impls.split(",")
  params = vit_layers.MultiHeadDotProductAttention(args.heads, dtype=jnp.dtype(args.dtype)).init(jax.random.key(2), x)

  result = dict(device_kind=jax.devices()[0].device_kind, jax=jax.__version__, batch=args.batch,
                tokens=args.tokens, width=args.width, heads=args.heads, dtype=args.dtype, impls={})
  ref = None
  for impl in impls:
    layer = vit_layers.MultiHeadDotProductAttention(args.heads, dtype=jnp.dtype(args.dtype), attention=impl)

    def fwd_bwd(params, x, dy, layer=layer):
      y, vjp = jax.vjp(lambda x: layer.apply(params, x).astype(jnp.float32), x)
      return y, vjp(dy)[0]

    step = jax.jit(fwd_bwd)
    try:
      y, dx = jax.block_until_ready(step(params, x, dy))
    except Exception as e:  # pylint: disable=broad-except  (report, and measure the others)
      result["impls"][impl] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
      continue
    times = []
    for _ in range(args.iters):
      t = time.perf_counter()
      jax.block_until_ready(step(params, x, dy))
      times.append(time.perf_counter() - t)
    entry = dict(fwd_bwd_ms=round(statistics.median(times) * 1e3, 3))
    y, dx = np.asarray(y), np.asarray(dx)
    if ref is None:
      ref = (y, dx)
    else:
      entry.update(
          out_max_abs_diff=float(np.abs(y - ref[0]).max()), out_ref_max_abs=float(np.abs(ref[0]).max()),
          grad_max_abs_diff=float(np.abs(dx - ref[1]).max()), grad_ref_max_abs=float(np.abs(ref[1]).max()))
    result["impls"][impl] = entry
  print(json.dumps(result))


if __name__ == "__main__":
  main()
