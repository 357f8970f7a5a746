"""Nearest-neighbour search by dot product over a gallery sharded across the mesh.

Every device scores the queries against its own rows of the gallery, chunk by chunk (so memory is
queries x chunk, whatever the gallery's size), keeping a running top-k; the devices' top-k lists are then
gathered and merged into the global top-k. On TPU the per-chunk selection is `jax.lax.approx_max_k` (its fast
path there); elsewhere it is the exact `jax.lax.top_k`.

A search may add a per-query bias by the item's cell: score = similarity / temperature + cell_logp[query, cell]
(-inf leaves a cell out). That is how gallery refinement searches only the top cells of f*.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from translocator_jax.runtime import sharding as sharding_lib

CHUNK = 16384
AXIS = "data"
PADDING = -2  # the cell of padding rows


@dataclasses.dataclass(frozen=True)
class DeviceGallery:
  """Gallery rows placed on the mesh: embeddings [N_pad, D] and cells int32 [N_pad] (-1: a row in no cell, which
  only plain searches return; -2: padding), split by rows over the mesh's data axis, each device's share a whole
  number of chunks."""
  embeddings: jax.Array
  cells: jax.Array
  size: int
  chunk: int
  mesh: jax.sharding.Mesh


def gallery_layout(rows: int, devices: int, chunk: int = CHUNK) -> tuple[int, int]:
  """(chunk, padded rows) of a gallery of `rows` split over `devices`: each device's share whole chunks."""
  chunk = int(max(1, min(chunk, -(-rows // devices))))
  return chunk, -(-rows // (devices * chunk)) * devices * chunk


def put_gallery(embeddings: np.ndarray, cells: np.ndarray | None = None, *, mesh=None, chunk: int = CHUNK,
                dtype=jnp.float32) -> DeviceGallery:
  """Places host rows (every process passes the whole gallery) on the mesh, padded to whole chunks per device."""
  mesh = mesh or sharding_lib.make_mesh()
  embeddings = np.asarray(embeddings)
  n, dim = embeddings.shape
  cells = np.zeros(n, np.int32) if cells is None else np.asarray(cells, np.int32)
  if cells.shape != (n,):
    raise ValueError(f"gallery cells have shape {cells.shape}, embeddings {embeddings.shape}")
  chunk, n_pad = gallery_layout(n, mesh.shape[AXIS], chunk)
  emb = np.zeros((n_pad, dim), jnp.dtype(dtype))
  emb[:n] = embeddings
  cell_rows = np.full(n_pad, PADDING, np.int32)
  cell_rows[:n] = np.maximum(cells, -1)
  rows = NamedSharding(mesh, P(AXIS))
  put = lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])
  return DeviceGallery(put(emb, NamedSharding(mesh, P(AXIS, None))), put(cell_rows, rows), n, chunk, mesh)


def _select(scores, k: int, approximate: bool):
  if approximate:
    return jax.lax.approx_max_k(scores, k)
  return jax.lax.top_k(scores, k)


def _merge(vals_a, ids_a, vals_b, ids_b, k: int):
  vals = jnp.concatenate([vals_a, vals_b], axis=1)
  ids = jnp.concatenate([ids_a, ids_b], axis=1)
  top, pos = jax.lax.top_k(vals, k)
  return top, jnp.take_along_axis(ids, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "chunk", "mesh", "biased", "approximate"))
def _search(queries, embeddings, cells, cell_logp, inv_temperature, *, k: int, chunk: int, mesh, biased: bool,
            approximate: bool):
  def local(q, emb, cell, logp, inv_t):
    n_local = emb.shape[0]
    offset = jax.lax.axis_index(AXIS) * n_local
    emb = emb.reshape(n_local // chunk, chunk, emb.shape[1])
    cell = cell.reshape(n_local // chunk, chunk)

    def body(carry, x):
      e, c, start = x
      s = jnp.dot(q, e.T.astype(q.dtype), preferred_element_type=jnp.float32)
      if biased:
        s = jnp.where(c[None, :] >= 0, s * inv_t + jnp.take(logp, jnp.maximum(c, 0), axis=1), -jnp.inf)
      else:
        s = jnp.where(c[None, :] > PADDING, s, -jnp.inf)
      vals, pos = _select(s, min(k, chunk), approximate)
      ids = start + pos.astype(jnp.int32)
      if k > chunk:  # keep the carry's width k
        vals = jnp.pad(vals, ((0, 0), (0, k - chunk)), constant_values=-jnp.inf)
        ids = jnp.pad(ids, ((0, 0), (0, k - chunk)), constant_values=-1)
      return _merge(*carry, vals, ids, k), None

    starts = offset + jnp.arange(emb.shape[0], dtype=jnp.int32) * chunk
    init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32), jnp.full((q.shape[0], k), -1, jnp.int32))
    (vals, ids), _ = jax.lax.scan(body, init, (emb, cell, starts))
    all_vals = jax.lax.all_gather(vals, AXIS, axis=1, tiled=True)  # [Q, devices * k]
    all_ids = jax.lax.all_gather(ids, AXIS, axis=1, tiled=True)
    top, pos = jax.lax.top_k(all_vals, k)
    return top, jnp.take_along_axis(all_ids, pos, axis=1)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS, None), P(AXIS), P(), P()),
                       out_specs=(P(), P()), check_vma=False)(queries, embeddings, cells, cell_logp,
                                                              inv_temperature)


def search(gallery: DeviceGallery, queries, k: int, *, cell_logp=None, temperature: float = 1.0,
           approximate: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """(scores float32 [Q, k], gallery rows int32 [Q, k]), best first, of L2-normalised queries [Q, D].

  Without cell_logp the score is the dot product. With cell_logp [Q, C] the score is dot / temperature +
  cell_logp[q, cell of the row]; rows in no cell, or whose cell has -inf, never come back unless fewer than k
  rows are left (their scores are then -inf). approximate: approx_max_k per chunk (default: when the gallery's mesh is on TPUs).
  """
  k = int(k)
  if not 0 < k <= gallery.size:
    raise ValueError(f"k={k} must be in [1, gallery size {gallery.size}]")
  if approximate is None:
    approximate = sharding_lib.platform(gallery.mesh) == "tpu"
  queries = jnp.asarray(queries, gallery.embeddings.dtype)
  biased = cell_logp is not None
  logp = jnp.asarray(cell_logp, jnp.float32) if biased else jnp.zeros((1, 1), jnp.float32)
  return _search(queries, gallery.embeddings, gallery.cells, logp, jnp.float32(1.0 / temperature), k=k,
                 chunk=gallery.chunk, mesh=gallery.mesh, biased=biased, approximate=bool(approximate))
