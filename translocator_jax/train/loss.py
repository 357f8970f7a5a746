"""The multi-task loss: weighted cross-entropies over the geo-cell partitions and the scene head.

Labels of -1 (no cell / unknown scene) and padded rows (batch['mask'] False) are ignored. Each head's loss is
sum(ce * valid) / n_valid, with n_valid counted over the whole (global) batch, so gradient accumulation over
micro-batches adds up to exactly the full-batch gradient.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from translocator_jax import errors
from translocator_jax.data.records import schema

EARTH_RADIUS_KM = 6371.0


def pairwise_haversine_km(a_latlon: jax.Array, b_latlon: jax.Array) -> jax.Array:
  """[N, M] great-circle distances between a [N, 2] and b [M, 2] (degrees)."""
  a = jnp.radians(a_latlon)[:, None, :]
  b = jnp.radians(b_latlon)[None, :, :]
  dlat = b[..., 0] - a[..., 0]
  dlon = b[..., 1] - a[..., 1]
  h = jnp.sin(dlat / 2) ** 2 + jnp.cos(a[..., 0]) * jnp.cos(b[..., 0]) * jnp.sin(dlon / 2) ** 2
  return 2 * EARTH_RADIUS_KM * jnp.arcsin(jnp.sqrt(jnp.clip(h, 0.0, 1.0)))


def head_labels(batch: Mapping[str, jax.Array], head: str) -> jax.Array:
  """The int32 [B] labels of `head`: a column of batch['cells'] for a partition, batch['scene'] for 'scene'."""
  if head in schema.PARTITION_NAMES:
    return batch["cells"][:, schema.PARTITION_NAMES.index(head)]
  if head == "scene":
    return batch["scene"]
  raise errors.ConfigError(f"config.model.heads: no labels for head {head!r}; want one of "
                           f"{schema.PARTITION_NAMES + ('scene',)}")


def valid_mask(batch: Mapping[str, jax.Array], labels: jax.Array) -> jax.Array:
  valid = labels >= 0
  if "mask" in batch:
    valid = valid & batch["mask"].astype(bool)
  return valid


def soft_targets(labels: jax.Array, num_classes: int, *, label_smoothing: float = 0.0,
                 true_latlon: jax.Array | None = None, cell_latlon: jax.Array | None = None,
                 haversine_tau_km: float = 0.0) -> jax.Array:
  """[B, C] target distributions.

  With haversine_tau_km > 0 (geo heads, PIGEON): target_c ∝ exp(-(d(x, g_c) - d(x, g_y)) / tau), where x is
  the true location, g_c a cell's mean coordinate and y the true cell. Label smoothing then mixes in uniform.
  """
  safe = jnp.maximum(labels, 0)
  if haversine_tau_km > 0:
    d = pairwise_haversine_km(true_latlon.astype(jnp.float32), cell_latlon)      # [B, C]
    d_true = jnp.take_along_axis(d, safe[:, None], axis=1)
    targets = jax.nn.softmax(-(d - d_true) / haversine_tau_km, axis=-1)
  else:
    targets = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
  if label_smoothing > 0:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return targets


def count_valid(batch: Mapping[str, jax.Array], heads) -> dict[str, jax.Array]:
  """Number of labelled rows per head (over this batch), at least 1."""
  return {h: jnp.maximum(valid_mask(batch, head_labels(batch, h)).sum(), 1).astype(jnp.float32) for h in heads}


def multitask_loss(logits: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
                   loss_config: ml_collections.ConfigDict, *,
                   cell_latlon: Mapping[str, np.ndarray] | None = None,
                   n_valid: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns (weighted total loss, metrics) for one (micro-)batch.

  Args:
    logits: head name -> [B, C] float logits.
    batch: dict with 'cells' [B, 3], 'scene' [B], 'latlon' [B, 2] and optionally 'mask' [B].
    loss_config: config.loss, completed (runtime/config_schema.py: a weight for every head).
    cell_latlon: partition name -> [C, 2] cell mean coordinates (needed for haversine smoothing).
    n_valid: per-head denominators (count_valid over the full batch); default: this batch's own counts.
  Metrics hold, per head, the loss sum ('{h}_loss_sum'), correct top-1 count ('{h}_correct') and count.
  """
  weights = loss_config.weights
  tau = loss_config.haversine_tau_km
  eps = loss_config.label_smoothing
  if n_valid is None:
    n_valid = count_valid(batch, logits.keys())
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for head, head_logits in logits.items():
    head_logits = head_logits.astype(jnp.float32)
    labels = head_labels(batch, head)
    valid = valid_mask(batch, labels)
    is_geo = head in schema.PARTITION_NAMES
    use_hav = is_geo and tau > 0
    if use_hav and (cell_latlon is None or head not in cell_latlon):
      raise errors.ConfigError(f"config.loss.haversine_tau_km > 0 needs the cell coordinates of partition {head!r} "
                               "(a training set with partitions)")
    targets = soft_targets(labels, head_logits.shape[-1], label_smoothing=eps,
                           true_latlon=batch["latlon"] if use_hav else None,
                           cell_latlon=jnp.asarray(cell_latlon[head]) if use_hav else None,
                           haversine_tau_km=tau if use_hav else 0.0)
    ce = -jnp.sum(targets * jax.nn.log_softmax(head_logits, axis=-1), axis=-1)
    ce_sum = jnp.sum(jnp.where(valid, ce, 0.0))
    total = total + weights[head] * ce_sum / n_valid[head]
    correct = jnp.sum(jnp.where(valid, jnp.argmax(head_logits, -1) == labels, False))
    metrics[f"{head}_loss_sum"] = ce_sum
    metrics[f"{head}_correct"] = correct.astype(jnp.float32)
    metrics[f"{head}_count"] = valid.sum().astype(jnp.float32)
  return total, metrics
