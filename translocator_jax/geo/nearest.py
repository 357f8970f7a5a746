"""The nearest reference location of each query location (great circle), jitted and chunked.

Used to say how far a test photo is from anything in the training set (leakage-aware evaluation): the same code
runs the 20k Earth patches and MP-16's 4.7M training coordinates. Points become unit vectors; the squared chord
|q - r|^2 is summed from per-axis differences (not from a dot product, whose float32 rounding cannot tell 1 km
from 0), and the minimum chord becomes km exactly: d = 2 R asin(chord / 2).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.geo.distance import EARTH_RADIUS_KM

REF_CHUNK = 8192
QUERY_CHUNK = 512


def unit_vectors(latlon) -> np.ndarray:
  """float32 [N, 3] unit vectors of [N, 2] (lat, lon) degrees."""
  latlon = np.deg2rad(np.asarray(latlon, np.float64).reshape(-1, 2))
  lat, lon = latlon[:, 0], latlon[:, 1]
  return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("ref_chunk",))
def _nearest_chunked(q, refs, ref_valid, ref_chunk: int):
  """q [Q, 3], refs [R, 3] (R a multiple of ref_chunk) -> (min squared chord [Q], index [Q])."""
  chunks = refs.reshape(-1, ref_chunk, 3)
  valid = ref_valid.reshape(-1, ref_chunk)

  def body(carry, x):
    best, best_i = carry
    r, ok, start = x
    d2 = sum((q[:, None, a] - r[None, :, a]) ** 2 for a in range(3))
    d2 = jnp.where(ok[None, :], d2, jnp.inf)
    i = jnp.argmin(d2, axis=1)
    m = jnp.take_along_axis(d2, i[:, None], axis=1)[:, 0]
    better = m < best
    return (jnp.where(better, m, best), jnp.where(better, start + i.astype(jnp.int32), best_i)), None

  starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * ref_chunk
  init = (jnp.full(q.shape[:1], jnp.inf, jnp.float32), jnp.zeros(q.shape[:1], jnp.int32))
  (best, best_i), _ = jax.lax.scan(body, init, (chunks, valid, starts))
  return best, best_i


def nearest_km(query_latlon, ref_latlon, *, ref_chunk: int = REF_CHUNK, query_chunk: int = QUERY_CHUNK
               ) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [Q] km to the nearest reference, int64 [Q] its row) for [Q, 2] queries and [R, 2] references."""
  refs = unit_vectors(ref_latlon)
  if not len(refs):
    raise ValueError("nearest_km: no reference locations")
  queries = unit_vectors(query_latlon)
  ref_chunk = int(min(ref_chunk, len(refs)))
  pad = -len(refs) % ref_chunk
  valid = np.concatenate([np.ones(len(refs), bool), np.zeros(pad, bool)])
  refs = jnp.asarray(np.concatenate([refs, np.zeros((pad, 3), np.float32)]))
  valid = jnp.asarray(valid)
  km, index = [], []
  for s in range(0, len(queries), query_chunk):
    q = queries[s:s + query_chunk]
    q = np.concatenate([q, np.zeros((query_chunk - len(q), 3), np.float32)])  # one compiled shape
    d2, i = _nearest_chunked(jnp.asarray(q), refs, valid, ref_chunk)
    n = min(query_chunk, len(queries) - s)
    chord = np.sqrt(np.asarray(d2, np.float64)[:n])
    km.append((2.0 * EARTH_RADIUS_KM * np.arcsin(np.minimum(chord / 2.0, 1.0))).astype(np.float32))
    index.append(np.asarray(i, np.int64)[:n])
  if not km:
    return np.zeros(0, np.float32), np.zeros(0, np.int64)
  return np.concatenate(km), np.concatenate(index)
