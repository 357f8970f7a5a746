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


# weighted_quantile's radix digits: (shift, bits) of a non-negative float32's bit pattern, most significant first
# (bit 31, the sign, is 0). Non-negative floats order as their bit patterns do, so three digits pin one value.
_DIGITS = ((21, 10), (10, 11), (0, 10))
# weighted_quantile sums each digit's weights in this many groups of the values, then adds the groups: one long
# float32 running sum per bin (tens of thousands of values in the top bins) loses the crossing by ~1e-6.
_GROUPS = 16


def weighted_quantile(values: jax.Array, weights: jax.Array, q: float) -> jax.Array:
  """[B] per row, the smallest value v with sum(weights[values <= v]) >= q * sum(weights): the q-quantile of
  non-negative `values` [B, N] weighted by non-negative `weights` [B, N], q in (0, 1].

  A radix select instead of a sort: three passes, each summing the weights by a digit of the values' bit pattern
  (a scatter-add into at most 2048 bins) and keeping the digit where the running mass crosses q: several times
  faster than a sort (benchmarks/README.md).
  The answer is one of `values`.
  """
  b, n = values.shape
  pad = (-n) % _GROUPS
  bits = jnp.pad(jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32), ((0, 0), (0, pad)))
  bits = bits.reshape(b, _GROUPS, -1)
  weights = jnp.pad(weights.astype(jnp.float32), ((0, 0), (0, pad))).reshape(b, _GROUPS, -1)
  rows, groups = jnp.arange(b)[:, None, None], jnp.arange(_GROUPS)[None, :, None]
  prefix = jnp.zeros((b,), jnp.int32)   # the digits chosen so far
  below = jnp.zeros((b,), jnp.float32)  # the mass of the values under the chosen prefix's range
  target = None
  for shift, width in _DIGITS:
    high = shift + width
    inside = (bits >> high) == (prefix[:, None, None] >> high) if high < 31 else jnp.ones(bits.shape, bool)
    digit = (bits >> shift) & ((1 << width) - 1)
    mass = jnp.zeros((b, _GROUPS, 1 << width), jnp.float32).at[rows, groups, digit].add(
        jnp.where(inside, weights, 0.0)).sum(1)
    cum = below[:, None] + jnp.cumsum(mass, axis=1)
    if target is None:
      target = q * cum[:, -1]  # the total as these sums see it, so the first digit always crosses
    k = jax.vmap(jnp.searchsorted)(cum, target)
    # Rounding may leave the sub-bins' sum a hair under the target: then the last bin that holds mass.
    last = jnp.max(jnp.where(mass > 0, jnp.arange(1 << width), 0), axis=1)
    k = jnp.minimum(k, last)
    below = jnp.where(k > 0, jnp.take_along_axis(cum, jnp.maximum(k - 1, 0)[:, None], axis=1)[:, 0], below)
    prefix = prefix | (k.astype(jnp.int32) << shift)
  return jax.lax.bitcast_convert_type(prefix, jnp.float32)


@functools.partial(jax.jit, static_argnames=("quantiles",))
def radii_km(cell_probs: jax.Array, centre: jax.Array, points: jax.Array, temperatures=(1.0, 1.0),
             quantiles: Sequence[float] = QUANTILES) -> jax.Array:
  """[B, Q] distances (km) from centre [B, 2] within which each photo's cell mixture, tempered by
  temperatures[q], holds the share quantiles[q] of its mass.

  cell_probs: [B, C] probabilities over the cells (any non-negative scores; renormalised); points: cell_points.
  """
  return _radii(_point_distances(centre, points), cell_probs, points.shape[1],
                jnp.asarray(temperatures, jnp.float32), quantiles)


@functools.partial(jax.jit, static_argnames=("quantiles",))
def _radii_at_each_temperature(cell_probs, centre, points, temperatures, quantiles):
  """[T, B, Q]: radii_km with every quantile at temperatures[t], the distances computed once for all T."""
  d = _point_distances(centre, points)
  return jax.lax.map(lambda t: _radii(d, cell_probs, points.shape[1], jnp.full((len(quantiles),), t), quantiles),
                     temperatures)


def _point_distances(centre: jax.Array, points: jax.Array) -> jax.Array:
  """[B, C * M]: from each centre [B, 2] to every cell's points [C, M, 2]."""
  b = centre.shape[0]
  pts = points.reshape(1, -1, 2)
  return distance.haversine_km(jnp.broadcast_to(centre[:, None, :], (b,) + pts.shape[1:]),
                               jnp.broadcast_to(pts, (b,) + pts.shape[1:]))


def _radii(d: jax.Array, cell_probs: jax.Array, points_per_cell: int, temperatures: jax.Array,
           quantiles: Sequence[float]) -> jax.Array:
  return jnp.stack([weighted_quantile(d, jnp.repeat(tempered(cell_probs, temperatures[i]), points_per_cell, axis=1),
                                      q) for i, q in enumerate(quantiles)], axis=1)


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
  grid = jnp.asarray([float(t) for t in temperatures], jnp.float32)
  radii = np.concatenate([  # [T, N, Q]
      np.asarray(_radii_at_each_temperature(jnp.asarray(cell_probs[i:i + batch]),
                                            jnp.asarray(pred_latlon[i:i + batch], jnp.float32), jnp.asarray(points),
                                            grid, quantiles))
      for i in range(0, len(cell_probs), batch)], axis=1)
  rows = []
  for t, at_t in zip(temperatures, radii):
    cov = (err[:, None] <= at_t).mean(0)
    rows.append({"temperature": float(t), **{f"coverage_{q:g}": float(c) for q, c in zip(quantiles, cov)}})
  best = tuple(min(rows, key=lambda r, q=q: abs(r[f"coverage_{q:g}"] - q))["temperature"] for q in quantiles)
  return best, rows
