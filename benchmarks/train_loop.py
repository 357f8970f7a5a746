"""Train-loop overhead: images/s of the bare jitted train step vs the same step fed by the grain pipeline.

  python benchmarks/train_loop.py [--config configs/earth_demo.py] [--steps 20]

Prints one JSON object: step_images_per_s (device-resident batch, the model's ceiling), loop_images_per_s
(batches from the real input pipeline, host->device put, metrics read back each step as the loop does) and
loop_vs_step (their ratio, 1.0 = the pipeline costs nothing). Both are measured in this process, same model.
"""
import argparse
import json
import time

from translocator_jax.runtime import perf

perf.configure_cpu_runtime()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from translocator_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.data import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.data.pipeline import inputs  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.runtime import config_io  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.runtime import sharding as sl  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.train import optimizer as optim_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/earth_demo.py")
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args()
  config = config_io.load_config(args.config)
  info = registry.dataset_info(config, config.data.train)
  partitions = registry.load_partitions(info)
  loop.resolve_head_sizes(config, partitions)
  cell_latlon = None
  if partitions:
    cell_latlon = {n: p.latlon_mean for n, p in zip(("coarse", "middle", "fine"), partitions)}
  mesh = sl.make_mesh()
  model = models.build_model(config.model)
  tx, sched = optim_lib.make_optimizer(config.optim, int(config.train.total_steps))
  params = step_lib.init_params(model, config.model, jax.random.key(0), mesh, False)
  state, shardings = step_lib.create_state(params, tx, mesh, False)
  train_step = step_lib.make_train_step(model, tx, config, schedule=sched, mesh=mesh, state_shardings=shardings,
                                        cell_latlon=cell_latlon, palette=info.palette)
  batch_size = int(config.data.batch_size)
  it = inputs.train_iterator(config, info, batch_size)
  local = next(it)
  batch = sl.put_batch({k: local[k] for k in step_lib.STEP_KEYS}, mesh)
  state, m = train_step(state, batch)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, m = train_step(state, batch)
  jax.block_until_ready(m)
  step_ips = args.steps * batch_size / (time.perf_counter() - t)
  t = time.perf_counter()
  for _ in range(args.steps):
    local = next(it)
    state, m = train_step(state, sl.put_batch({k: local[k] for k in step_lib.STEP_KEYS}, mesh))
    float(m["loss"])
  loop_ips = args.steps * batch_size / (time.perf_counter() - t)
  print(json.dumps({"config": args.config, "batch_size": batch_size, "devices": jax.device_count(),
                    "step_images_per_s": round(step_ips, 1), "loop_images_per_s": round(loop_ips, 1),
                    "loop_vs_step": round(loop_ips / step_ips, 3)}))


if __name__ == "__main__":
  main()
