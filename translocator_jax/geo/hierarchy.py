"""Hierarchical prediction over coarse / middle / fine partitions (f* of Mueller-Budack et al. 2018).

score(fine c) = p_fine(c) * p_middle(parent(c)) * p_coarse(grandparent(c)), where parent / grandparent
are the middle / coarse cells that are S2 ancestors-or-self of the fine cell.

Fallback for a fine cell with no ancestor in a coarser partition (the coarser build dropped that region):
its ancestor is the coarser cell whose mean coordinate is nearest (great circle) to the fine cell's mean
coordinate, so every fine cell gets a real probability from every level. On the shipped MP-16 partitions
every fine cell has a true S2 ancestor, so the fallback never fires there (tests check both).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.geo import cells as cells_lib
from translocator_jax.geo.distance import haversine_km_numpy

# The partition levels, coarse -> fine: the geo-cell heads, the partition files and the cells of a record.
LEVELS = ("coarse", "middle", "fine")


def _ancestors(fine: cells_lib.Partition, coarse: cells_lib.Partition) -> tuple[np.ndarray, np.ndarray]:
  """coarse class of each fine class, and whether it is a true S2 ancestor (False: nearest-mean fallback)."""
  anc = coarse.assign_ids(fine.cell_ids)
  exact = anc >= 0
  for c in np.nonzero(~exact)[0]:
    d = haversine_km_numpy(np.broadcast_to(fine.latlon_mean[c], coarse.latlon_mean.shape), coarse.latlon_mean)
    anc[c] = int(np.argmin(d))
  return anc.astype(np.int32), exact


@dataclasses.dataclass
class Hierarchy:
  """fine -> (middle, coarse) class maps and the fine cells' mean coordinates."""
  fine_to_middle: np.ndarray     # int32 [C_fine]
  fine_to_coarse: np.ndarray     # int32 [C_fine]
  fine_latlon: np.ndarray        # float32 [C_fine, 2]
  exact_middle: np.ndarray       # bool [C_fine]: True where the middle class is a true S2 ancestor
  exact_coarse: np.ndarray       # bool [C_fine]

  @classmethod
  def from_partitions(cls, partitions: Sequence[cells_lib.Partition]) -> "Hierarchy":
    """partitions ordered [coarse, middle, fine]."""
    if len(partitions) != 3:
      raise ValueError(f"need [coarse, middle, fine] partitions, got {len(partitions)}")
    coarse, middle, fine = partitions
    to_middle, exact_m = _ancestors(fine, middle)
    to_coarse, exact_c = _ancestors(fine, coarse)
    return cls(to_middle, to_coarse, fine.latlon_mean.astype(np.float32), exact_m, exact_c)


@jax.jit
def fstar_scores(fine_to_middle, fine_to_coarse, probs_coarse, probs_middle, probs_fine):
  """[B, C_fine] hierarchical scores."""
  return probs_fine * jnp.take(probs_middle, fine_to_middle, axis=1) * jnp.take(probs_coarse, fine_to_coarse,
                                                                                axis=1)


def cell_probabilities(probs: Mapping[str, Any], hierarchy: Hierarchy | None = None) -> jax.Array:
  """[B, C_fine] probabilities over the finest cells, summing to 1 over the Earth: f* of the three heads when the
  hierarchy is given and all three are there, else the finest head there (a model with fewer geo heads)."""
  if hierarchy is not None and all(level in probs for level in LEVELS):
    return _fstar_probabilities(hierarchy.fine_to_middle, hierarchy.fine_to_coarse,
                                *(probs[level] for level in LEVELS))
  return _normalised(probs[[level for level in LEVELS if level in probs][-1]])


def _normalised(scores):
  return scores / jnp.maximum(scores.sum(axis=1, keepdims=True), 1e-30)


@jax.jit
def _fstar_probabilities(fine_to_middle, fine_to_coarse, probs_coarse, probs_middle, probs_fine):
  return _normalised(fstar_scores(fine_to_middle, fine_to_coarse, probs_coarse, probs_middle, probs_fine))


def topk_latlon(probs, latlon_mean, k: int):
  """Top-k classes of [B, C] probabilities -> (classes int32 [B, k], scores [B, k], latlon [B, k, 2])."""
  return _topk_latlon(jnp.asarray(probs), jnp.asarray(latlon_mean, jnp.float32), k)


@jax.jit(static_argnums=2)
def _topk_latlon(probs, latlon_mean, k):
  scores, classes = jax.lax.top_k(probs, k)
  return classes.astype(jnp.int32), scores, jnp.take(latlon_mean, classes, axis=0)


def fstar_topk(hierarchy: Hierarchy, probs_coarse, probs_middle, probs_fine, k: int = 1):
  """f*: top-k fine classes by p_fine * p_middle(parent) * p_coarse(grandparent), with their mean coords.

  probs_*: [B, C_level] probabilities (softmax outputs). Returns (fine_classes int32 [B, k], scores [B, k],
  latlon [B, k, 2]).
  """
  scores = fstar_scores(jnp.asarray(hierarchy.fine_to_middle), jnp.asarray(hierarchy.fine_to_coarse),
                        jnp.asarray(probs_coarse), jnp.asarray(probs_middle), jnp.asarray(probs_fine))
  return _topk_latlon(scores, jnp.asarray(hierarchy.fine_latlon), k)
