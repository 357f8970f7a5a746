"""Confidence radii: how far from the answer the truth may lie.

A prediction's probability over fine cells is read as a mixture: the photo was taken in cell c with probability
p_c and, within c, where c's training photos are (an isotropic Gaussian around the cell's mean coordinate whose
RMS radius is the cell's spread, Partition.cell_spread_km). radius_q is the distance from the answer within which
that mixture holds the share q of its mass. When the probabilities are calibrated, the truth lies inside radius50
for half of the photos and inside radius90 for nine in ten; translocator-eval measures both shares
(coverage_radius50, coverage_radius90).

Each cell's Gaussian is represented by POINTS fixed draws (a golden-angle spiral over the Rayleigh quantiles:
deterministic, and the same for every photo), so a radius is a weighted quantile over C * POINTS distances,
computed jitted on the device that holds the probabilities.

A model's probabilities are rarely calibrated, and not in the same way at the centre and in the tail (on the Earth
demo the plain mixture covers 55% at radius50 but 85% at radius90). So each radius has its own temperature T_q
(probabilities p^(1/T_q), renormalised: T > 1 spreads the mass, T < 1 sharpens it), fitted on the validation split
so that radius_q covers the share q of its photos (fit_temperatures); never on test.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.geo import distance

POINTS = 16
QUANTILES = (0.5, 0.9)
_KM_PER_DEGREE = np.pi * distance.EARTH_RADIUS_KM / 180.0


def unit_offsets(points: int = POINTS) -> np.ndarray:
  """[points, 2] (north, east) offsets of a 2D isotropic Gaussian with RMS radius 1 (E[r^2] = 1)."""
  u = (np.arange(points) + 0.5) / points
  radius = np.sqrt(-np.log1p(-u))           # the Rayleigh quantiles of a Gaussian with E[r^2] = 1
  angle = np.pi * (3.0 - np.sqrt(5.0)) * np.arange(points)
  return np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)


def cell_points(cell_latlon, spread_km, points: int = POINTS) -> np.ndarray:
  """float32 [C, points, 2]: the draws (lat, lon) of every cell's Gaussian (on the tangent plane at its mean)."""
  mean = np.asarray(cell_latlon, np.float64).reshape(-1, 1, 2)
  spread = np.asarray(spread_km, np.float64).reshape(-1, 1)
  off = unit_offsets(points)[None] * spread[..., None] / _KM_PER_DEGREE  # degrees of latitude
  lat = np.clip(mean[..., 0] + off[..., 0], -90.0, 90.0)
  lon = mean[..., 1] + off[..., 1] / np.maximum(np.cos(np.radians(mean[..., 0])), 0.01)
  lon = (lon + 180.0) % 360.0 - 180.0
  return np.stack([lat, lon], -1).astype(np.float32)


def tempered(cell_probs: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """p^(1/T), renormalised over the last axis."""
  logp = jnp.log(jnp.maximum(cell_probs.astype(jnp.float32), 1e-30)) / temperature
  return jax.nn.softmax(logp, axis=-1)


@functools.partial(jax.jit, static_argnames=("quantiles",))
def radii_km(cell_probs: jax.Array, centre: jax.Array, points: jax.Array, temperatures=(1.0, 1.0),
             quantiles: Sequence[float] = QUANTILES) -> jax.Array:
  """[B, Q] distances (km) from centre [B, 2] within which each photo's cell mixture, tempered by
  temperatures[q], holds the share quantiles[q] of its mass.

  cell_probs: [B, C] probabilities over the cells (any non-negative scores; renormalised); points: cell_points.
  """
  b, c = cell_probs.shape
  m = points.shape[1]
  pts = points.reshape(1, c * m, 2)
  d = distance.haversine_km(jnp.broadcast_to(centre[:, None, :], (b, c * m, 2)),
                            jnp.broadcast_to(pts, (b, c * m, 2)))
  order = jnp.argsort(d, axis=1)
  d_sorted = jnp.take_along_axis(d, order, axis=1)
  temperatures = jnp.asarray(temperatures, jnp.float32)
  out = []
  for i, q in enumerate(quantiles):
    weights = jnp.repeat(tempered(cell_probs, temperatures[i]), m, axis=1)
    mass = jnp.cumsum(jnp.take_along_axis(weights, order, axis=1), axis=1)
    at = jax.vmap(lambda cm: jnp.searchsorted(cm, q * cm[-1]))(mass)
    out.append(jnp.take_along_axis(d_sorted, jnp.minimum(at, c * m - 1)[:, None], axis=1)[:, 0])
  return jnp.stack(out, axis=1)


def coverage(radius_km, pred_latlon, true_latlon) -> float:
  """Share of photos whose true location lies within radius_km of the prediction."""
  err = distance.haversine_km_numpy(np.asarray(pred_latlon), np.asarray(true_latlon))
  return float(np.mean(err <= np.asarray(radius_km)))


TEMPERATURES = tuple(float(t) for t in np.round(np.exp(np.linspace(np.log(0.25), np.log(8.0), 41)), 4))


def fit_temperatures(cell_probs: np.ndarray, pred_latlon: np.ndarray, true_latlon: np.ndarray, points: np.ndarray,
                     quantiles: Sequence[float] = QUANTILES, temperatures: Sequence[float] = TEMPERATURES,
                     batch: int = 128) -> tuple[tuple[float, ...], list[dict]]:
  """For each quantile q, the temperature (of the grid) whose radius_q covers closest to the share q of these
  (validation) photos. Returns (temperatures, one row per grid temperature: the coverage of each radius)."""
  quantiles = tuple(float(q) for q in quantiles)
  err = distance.haversine_km_numpy(np.asarray(pred_latlon), np.asarray(true_latlon))
  rows = []
  for t in temperatures:
    radii = np.concatenate([
        np.asarray(radii_km(jnp.asarray(cell_probs[i:i + batch]), jnp.asarray(pred_latlon[i:i + batch], jnp.float32),
                            jnp.asarray(points), (float(t),) * len(quantiles), quantiles))
        for i in range(0, len(cell_probs), batch)])
    cov = (err[:, None] <= radii).mean(0)
    rows.append({"temperature": float(t), **{f"coverage_{q:g}": float(c) for q, c in zip(quantiles, cov)}})
  best = tuple(min(rows, key=lambda r, q=q: abs(r[f"coverage_{q:g}"] - q))["temperature"] for q in quantiles)
  return best, rows
