"""infer.search: the sharded, chunked top-k equals a brute-force numpy search, on 1 and on 8 (fake) devices."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Run as a script (in a subprocess with 8 fake devices, or in-process): prints the search results as JSON.
SCRIPT = r"""
import json, sys
import jax, numpy as np
from translocator_jax.infer import search

rng = np.random.default_rng(0)
n, dim, q, k = 1001, 16, 9, 12                 # 1001: padding rows on every device count
g = rng.normal(size=(n, dim)).astype(np.float32); g /= np.linalg.norm(g, axis=1, keepdims=True)
queries = rng.normal(size=(q, dim)).astype(np.float32); queries /= np.linalg.norm(queries, axis=1, keepdims=True)
cells = rng.integers(-1, 6, n)                  # -1: a row with no cell
logp = np.log(rng.dirichlet(np.ones(6), q)).astype(np.float32)
logp[:, 2] = -np.inf                            # cell 2 left out
gallery = search.put_gallery(g, cells, chunk=32)   # several chunks per device, k (12) < chunk
small = search.put_gallery(g, cells, chunk=8)      # k > chunk
out = {"devices": jax.device_count()}
for name, gal in (("chunk32", gallery), ("chunk8", small)):
  s, i = search.search(gal, queries, k)
  out[name] = {"plain": [np.asarray(s).tolist(), np.asarray(i).tolist()]}
  s, i = search.search(gal, queries, k, cell_logp=logp, temperature=0.1)
  out[name]["biased"] = [np.asarray(s).tolist(), np.asarray(i).tolist()]
print(json.dumps(out))
"""


def _reference():
  rng = np.random.default_rng(0)
  n, dim, q, k = 1001, 16, 9, 12
  g = rng.normal(size=(n, dim)).astype(np.float32); g /= np.linalg.norm(g, axis=1, keepdims=True)
  queries = rng.normal(size=(q, dim)).astype(np.float32); queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  cells = rng.integers(-1, 6, n)
  logp = np.log(rng.dirichlet(np.ones(6), q)).astype(np.float32)
  logp[:, 2] = -np.inf
  sims = queries.astype(np.float64) @ g.T.astype(np.float64)
  biased = np.where(cells >= 0, sims / 0.1 + logp[:, np.maximum(cells, 0)], -np.inf)
  return {"plain": sims, "biased": biased, "cells": cells}, k


def _run(devices: int) -> dict:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [1, 8])
def test_search_equals_numpy_brute_force(devices):
  got = _run(devices)
  assert got["devices"] == devices
  want, k = _reference()
  for layout in ("chunk32", "chunk8"):
    for kind in ("plain", "biased"):
      scores, ids = (np.asarray(a) for a in got[layout][kind])
      order = np.argsort(-want[kind], axis=1, kind="stable")[:, :k]
      np.testing.assert_array_equal(ids, order, err_msg=f"{layout} {kind}")
      np.testing.assert_allclose(scores, np.take_along_axis(want[kind], order, 1), rtol=1e-5, atol=1e-4)
  # The left-out cell never comes back while other rows remain.
  ids = np.asarray(got["chunk32"]["biased"][1])
  assert ids.min() >= 0 and not (want["cells"][ids] == 2).any() and not (want["cells"][ids] == -1).any()


def test_search_rejects_k_past_the_gallery():
  from translocator_jax.infer import search
  g = search.put_gallery(np.eye(4, dtype=np.float32))
  with pytest.raises(ValueError, match="gallery size 4"):
    search.search(g, np.eye(4, dtype=np.float32)[:1], 5)
