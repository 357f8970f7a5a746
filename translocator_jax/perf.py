"""Runtime performance settings. No JAX import here: XLA reads XLA_FLAGS when its CPU backend starts."""
from __future__ import annotations

import os

# On the project's 2-core AVX-512 CPU (S/16 two-stream train step) routing dots through XNNPACK took a plain
# Flax step from 0.81x to 0.89x eager PyTorch on a quiet machine (DESIGN.md). On a busy shared CPU the
# alternatives (ynn/onednn dot fusions, +eltwise) were within noise of it: see benchmarks/model_step.py.
CPU_FLAGS = ("--xla_cpu_experimental_xnn_fusion_type=dot",)


def cpu_performance_flags(extra: tuple[str, ...] = ()) -> str:
  """Appends the CPU speed flags to $XLA_FLAGS (keeping flags already set) and returns the new value.

  Call before JAX's first computation (importing jax is fine; creating an array or jitting is too late).
  """
  current = os.environ.get("XLA_FLAGS", "")
  have = {f.split("=")[0] for f in current.split()}
  add = [f for f in CPU_FLAGS + tuple(extra) if f.split("=")[0] not in have]
  os.environ["XLA_FLAGS"] = " ".join([current] + add).strip()
  return os.environ["XLA_FLAGS"]
