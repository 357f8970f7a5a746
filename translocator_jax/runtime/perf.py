"""Runtime performance settings. No JAX import here: XLA reads XLA_FLAGS when its CPU backend starts."""
from __future__ import annotations

import ctypes
import glob
import os
import sys

# XNNPACK runs XLA:CPU's dots faster than its default path on the AVX-512 CPUs this project trains on; the
# alternatives (ynn/onednn dot fusions, +eltwise) measured no better (benchmarks/model_step.py; docs/performance.md).
CPU_FLAGS = ("--xla_cpu_experimental_xnn_fusion_type=dot",)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def cpu_performance_flags(extra: tuple[str, ...] = ()) -> str:
  """Appends the CPU speed flags to $XLA_FLAGS (keeping flags already set) and returns the new value.

  Call before JAX's first computation (importing jax is fine; creating an array or jitting is too late).
  """
  current = os.environ.get("XLA_FLAGS", "")
  have = {f.split("=")[0] for f in current.split()}
  add = [f for f in CPU_FLAGS + tuple(extra) if f.split("=")[0] not in have]
  os.environ["XLA_FLAGS"] = " ".join([current] + add).strip()
  return os.environ["XLA_FLAGS"]


def keep_freed_host_memory() -> bool:
  """Makes glibc malloc keep and reuse freed memory instead of returning it to the kernel; True if applied.

  XLA:CPU allocates every step's activation buffers afresh. With glibc's defaults the large ones are mmap'd
  (or carved from per-thread arenas that are trimmed) and handed back on free, so each S/16 train step
  page-faulted ~2 GB back in: ~510k minor faults and ~2.3 s of kernel time a 5.6 s step on this 2-core CPU.
  One arena, no mmap and no trimming make the freed buffers come back warm (0 faults; 5.6 s -> 4.0 s). The
  cost: the process keeps its peak heap until it exits, the right trade for a trainer or evaluator. Linux/glibc
  only (elsewhere a no-op); TRANSLOCATOR_KEEP_HOST_MEMORY=0 turns it off. Call early, before threads allocate.
  """
  if os.environ.get("TRANSLOCATOR_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (musl, ...)
    return False
  return all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def tpu_host() -> bool:
  """Whether this machine has TPU chips: /dev/accel* (v4, v5e) or /dev/vfio/N (v5p, v6e, TPU7x)."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_libtpu_off_tpu() -> None:
  """Off a TPU VM, libtpu (the `tpu` and `dev` extras) still starts with JAX and looks for a TPU: it queries the
  cloud metadata server and writes error lines about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES to stderr. With
  these variables it finds none quietly; compile-only TPU devices (runtime.tpu) work the same. A TPU VM, or
  anything the user has set, is left alone. No JAX import: call before JAX starts."""
  if tpu_host():
    return
  # No chips to share either, so libtpu's one-process lockfile would only serialise compile-only work.
  for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(key, value)


def configure_cpu_runtime() -> None:
  """The above: what the command-line entry points call first."""
  cpu_performance_flags()
  keep_freed_host_memory()
  quiet_libtpu_off_tpu()
