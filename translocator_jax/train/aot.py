"""The train step compiled ahead of time for a TPU topology from any host: what fits a pod, before renting it.

compile_train_step(config, 'v5e:16x16') builds exactly what training would run (the state, its shardings over
the config's mesh laid out on that topology, the batch as the pipeline yields it, the step with the schedule
and the config's options), lowers it with abstract values (no data read, no workdir written, no parameter
initialised) and compiles it for libtpu's compile-only devices. The report: per-device memory against the HBM,
compile seconds, collectives, FLOPs and bytes, a roofline bound on the step time (runtime.tpu).
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from translocator_jax import errors, models
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema
from translocator_jax.runtime import config_schema
from translocator_jax.runtime import sharding as sharding_lib
from translocator_jax.runtime import tpu
from translocator_jax.train import optimizer as optim_lib
from translocator_jax.train import step as step_lib


def _check_heads(config: ml_collections.ConfigDict) -> None:
  unresolved = [h for h, n in config.model.heads.items() if not n]
  if unresolved:
    example = " ".join(f"--set model.heads.{h}=N" for h in unresolved)
    raise errors.ConfigError(f"config.model.heads {unresolved} have size 0 (taken from the dataset's partitions "
                             f"when training); a compile reads no data, so give them: {example}")


def abstract_train_state(config: ml_collections.ConfigDict, model, tx, mesh) -> tuple[Any, Any]:
  """(state as ShapeDtypeStructs carrying their shardings, the shardings), without initialising anything."""
  image, seg = step_lib.dummy_inputs(config.model)

  def make(key):
    params = model.init({"params": key, "dropout": key}, image, seg, train=False)["params"]
    return {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params, "opt_state": tx.init(params)}

  shapes = jax.eval_shape(make, jax.random.key(0))
  shardings = sharding_lib.state_shardings(shapes, mesh, config.train.fsdp_min_size)
  shardings["step"] = sharding_lib.replicated(mesh)
  return step_lib.abstract_state(shardings, shapes), shardings


def lower_train_step(config: ml_collections.ConfigDict, devices: list[Any]):
  """(lowered step, mesh) of `config` over `devices` (compile-only TPU devices, or real ones)."""
  config = config_schema.complete(config)
  _check_heads(config)
  mesh = sharding_lib.make_mesh(sharding_lib.mesh_axes(config), devices)
  global_batch = config.data.batch_size
  if global_batch % len(devices):
    raise errors.ConfigError(f"config.data.batch_size={global_batch} must be a multiple of the {len(devices)} "
                             "devices")
  model = models.build_model(config.model, sharding_lib.platform(mesh))
  tx, schedule = optim_lib.make_optimizer(config.optim, config.train.total_steps)
  state, state_shardings = abstract_train_state(config, model, tx, mesh)
  # Constants of the right shapes: their values change nothing in the compiled program's size or work.
  cell_latlon = None
  if config.loss.haversine_tau_km > 0:
    cell_latlon = {h: np.zeros((n, 2), np.float32) for h, n in config.model.heads.items()
                   if h in schema.PARTITION_NAMES}
  palette = np.zeros((config.model.num_seg_classes, 3), np.uint8)
  train_step = step_lib.make_train_step(model, tx, config, schedule=schedule, mesh=mesh,
                                        state_shardings=state_shardings, cell_latlon=cell_latlon, palette=palette)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
           for k, v in inputs.train_batch_spec(config, global_batch).items()}
  return train_step.lower(state, batch), mesh


def compile_train_step(config: ml_collections.ConfigDict, topology: str, slices: int = 1) -> dict[str, Any]:
  """The train step of `config` compiled for `topology` (x `slices`): the report (see compile_for_topology)."""
  config = config_schema.complete(config)
  return tpu.compile_for_topology(lambda devices: lower_train_step(config, devices), config, topology, slices)
