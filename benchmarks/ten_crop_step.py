"""What the authors' ten-crop training costs: one train step on ten crops a photo against one crop, same process.

  .venv/bin/python benchmarks/ten_crop_step.py      # two-stream Ti/16 at 224 px (the :runlocal model), batch 4

Prints one JSON object: best-of-3 seconds of each step and their ratio.
"""
import time, numpy as np, jax, json
from translocator_jax import models
from translocator_jax.runtime import config_io, sharding as sl
from translocator_jax.train import optimizer as ol, step as sp
config = config_io.load_config("configs/translocator_b16_mp16.py:runlocal")  # Ti/16 at 224 px
config.model.heads = {"coarse": 16, "middle": 16, "fine": 16, "scene": 3}
model = models.build_model(config.model); mesh = sl.make_mesh()
B = 4
rng = np.random.default_rng(0)
def batch(k):
  shape = (B, k) if k > 1 else (B,)
  return {"image": rng.integers(0, 255, shape + (224, 224, 3), np.uint8), "seg": rng.integers(0, 150, shape + (224, 224), np.uint8),
          "cells": np.zeros((B, 3), np.int32), "scene": np.zeros(B, np.int32), "latlon": np.zeros((B, 2), np.float32), "mask": np.ones(B, bool)}
params = model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32), np.zeros((1, 224, 224, 3), np.float32))["params"]
tx, sched = ol.make_optimizer(config.optim, 100)
state = {"step": jax.numpy.int32(0), "params": params, "opt_state": tx.init(params)}
shard = jax.tree.map(lambda _: sl.replicated(mesh), state)
from translocator_jax.data.records import palette as P
step = sp.make_train_step(model, tx, config, schedule=sched, mesh=mesh, state_shardings=shard, palette=P.palette())
times = {}
for k in (1, 10):
  b = batch(k); st = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)
  st, _ = step(st, b); jax.block_until_ready(st)
  best = 1e9
  for _ in range(3):
    t = time.perf_counter(); st, m = step(st, b); jax.block_until_ready(m); best = min(best, time.perf_counter() - t)
  times[k] = best
print(json.dumps({"model": "Ti/16 two-stream, 224 px, CPU", "batch": B, "one_crop_s": round(times[1], 3), "ten_crop_s": round(times[10], 3), "ratio": round(times[10] / times[1], 2)}))
