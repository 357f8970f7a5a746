"""Device mesh, shardings and host -> device batch placement.

Two mesh axes, big_vision / MaxText style: 'data' (pure data parallelism) and 'fsdp' (data parallelism whose
parameters and optimizer state are split over it). A batch is split over both; each parameter array over 'fsdp'
along its largest axis that divides evenly (small arrays stay replicated). config.mesh gives the axis sizes
({'data': -1, 'fsdp': 1} by default: -1 takes the remaining devices); train.fsdp=True is the short way to put
every device on 'fsdp'. The mesh follows the hardware: jax's create_device_mesh orders a slice's devices along
its ICI torus, and with several slices the 'data' axis spans them over DCN (create_hybrid_device_mesh), so only
the gradient all-reduce crosses slices. The same code serves one CPU, fake CPU devices, a GPU, a multi-host pod
and (compile-only devices) a TPU topology compiled for from a CPU host.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from translocator_jax import errors

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch's leading axis is split over both


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment describes a multi-process job.

  Detected: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (explicit, e.g. CPU tests with gloo),
  TRANSLOCATOR_DISTRIBUTED=auto (TPU pod VMs: everything auto-detected), TPU_WORKER_HOSTNAMES listing several
  hosts, SLURM with several tasks. A plain single-host run does nothing.
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    # CPU collectives across processes need gloo; the setting is ignored by GPU / TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    return
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  slurm = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
  if os.environ.get("TRANSLOCATOR_DISTRIBUTED") == "auto" or "," in tpu_hosts or slurm:
    jax.distributed.initialize()  # coordinator, process count and id from the TPU / SLURM environment


def mesh_axes(config) -> dict[str, int]:
  """{'data': n, 'fsdp': m} as config.mesh (and train.fsdp) ask, -1 left to resolve against the device count
  (the sizes are checked when the config is completed: runtime/config_schema.py)."""
  if config.train.fsdp:
    return {DATA_AXIS: 1, FSDP_AXIS: -1}
  return {DATA_AXIS: config.mesh.data, FSDP_AXIS: config.mesh.fsdp}


def inference_axes(config) -> dict[str, int]:
  """The mesh an evaluation, gallery or validation of `config`'s model runs on: every device on 'fsdp' when the
  run split its parameters (a model too big to replicate), else on 'data'. Never the run's own sizes: a model
  trained on a pod is evaluated on other machines."""
  split = mesh_axes(config)[FSDP_AXIS] != 1
  return {DATA_AXIS: 1, FSDP_AXIS: -1} if split else {DATA_AXIS: -1, FSDP_AXIS: 1}


def resolve_axes(axes: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Axis sizes with -1 resolved; their product must be the device count."""
  fixed = math.prod(v for v in axes.values() if v != -1)
  sizes = {k: (n_devices // fixed if v == -1 else v) for k, v in axes.items()}
  if n_devices % fixed or math.prod(sizes.values()) != n_devices:
    raise errors.ConfigError(f"config.mesh={dict(axes)} does not cover the {n_devices} devices "
                             f"(the sizes must multiply to {n_devices})")
  return sizes


def make_mesh(axes: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """The ('data', 'fsdp') mesh over `devices` (default: all of jax.devices()), laid out along the hardware.

  Devices of several TPU slices (their slice_index) put the slices on the 'data' axis, over DCN.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_axes(axes or {DATA_AXIS: -1, FSDP_AXIS: 1}, len(devices))
  shape = [sizes[a] for a in MESH_AXES]
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:
    if sizes[DATA_AXIS] % slices:
      raise errors.ConfigError(f"config.mesh 'data' axis of {sizes[DATA_AXIS]} must be a multiple of the {slices} "
                               f"slices (data parallelism spans slices over DCN)")
    ici = [sizes[DATA_AXIS] // slices, sizes[FSDP_AXIS]]
    grid = mesh_utils.create_hybrid_device_mesh(ici, [slices, 1], devices)
  elif devices[0].platform == "tpu":
    grid = mesh_utils.create_device_mesh(shape, devices)
  else:  # CPU / GPU devices and processes: their own order (each process's devices stay together)
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def platform(mesh: Mesh) -> str:
  """'cpu', 'gpu' or 'tpu': the devices a program over `mesh` is compiled for (compile-only TPU devices
  included). Implementation choices read this, never the process's own backend."""
  return mesh.devices.flat[0].platform


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int = 2 ** 14) -> P:
  """Shard the largest evenly divisible axis over 'fsdp'; small arrays (biases, norms) stay replicated."""
  if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> Any:
  """NamedShardings for every leaf of a (abstract) train state: split over 'fsdp' when that axis has devices."""
  size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(getattr(leaf, "shape", ())), size,
                                                                 fsdp_min_size)), abstract_state)


def weights_gathered_where_used(mesh: Mesh) -> contextlib.AbstractContextManager:
  """The context to trace the model in: with parameters split over 'fsdp', the mesh, so that the model gathers
  each weight whole where it is used (models.layers.used_whole) and, under remat, again in the backward pass rather
  than keeping every gathered weight live; nothing without 'fsdp', leaving a data-parallel program unchanged."""
  if mesh.shape[FSDP_AXIS] == 1:
    return contextlib.nullcontext()
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch (checks it divides over processes and devices)."""
  n_proc, n_dev = jax.process_count(), jax.device_count()
  if global_batch_size % n_dev:
    raise errors.ConfigError(f"config.data.batch_size={global_batch_size} must be a multiple of the device count "
                             f"{n_dev}")
  return global_batch_size // n_proc


def put_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays, split over 'data', from this process's rows (each host feeds its own shard)."""
  sharding = batch_sharding(mesh)
  n_proc = jax.process_count()
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OUS":  # strings (ids) stay on the host
      continue
    global_shape = (value.shape[0] * n_proc,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
