"""Geo-localization accuracy table: share within thresholds, median / mean km and GeoScore.

`accuracy_table` is one jitted kernel that streams the pairs in chunks (nothing of size N is materialised
besides the inputs, so 10 M pairs fit easily) and per chunk:
  - computes (h, q) = (sin^2, cos^2)(d / 2R) from polynomials (see distance.py) and d from them;
  - counts h <= sin^2(t / 2R) per threshold t (monotone in d: no asin needed for the accuracies);
  - sums d and 5000 exp(-d / 1492.7) (compensated across chunks);
  - for the exact median: counts distances below a window [lo, hi] of float32 bit patterns and histograms the
    distances inside it (non-negative floats order like their int32 bits).
The window comes from a strided sample (1/16 of the pairs) and holds the middle ranks with overwhelming
probability; a histogram bin of one bit pattern pins the median down exactly. When a bin is wider than one
pattern, or the sample missed (adversarial orderings), further histogram passes narrow the window until it
is one pattern wide, so the median is always exact: it equals the median of the kernel's own float32
distances, numpy-style (mean of the two middle values for even counts).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from translocator_jax.geo.distance import EARTH_RADIUS_KM, haversine_terms, terms_to_km

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0
THRESHOLD_NAMES = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}

_CHUNK = 32768
_SAMPLE_STRIDE = 16
_HIST_BITS = 17
_NBINS = 1 << _HIST_BITS
_SAMPLE_SHIFT = 15           # sample histogram: float bits >> 15 -> 2^16 bins cover every finite distance
_MAX_FINITE_BITS = 0x7F7FFFFF


def threshold_key(t: float) -> str:
  return f"acc_{t:g}km"


def _bit_length(x):
  return 32 - lax.clz(x.astype(jnp.int32))


def _kahan_add(acc, x):
  s, c = acc
  y = x - c
  t = s + y
  return t, (t - s) - y


def _chunk_distance(pred_c, true_c):
  h, q = haversine_terms(pred_c[:, 0], pred_c[:, 1], true_c[:, 0], true_c[:, 1])
  # Barriers keep XLA from re-deriving h and d inside every consumer fusion (it would, several times).
  h, q = lax.optimization_barrier((h, q))
  return lax.optimization_barrier((h, terms_to_km(h, q)))


def _histogram(bits, valid, lo, hi, shift):
  inside = valid & (bits >= lo) & (bits <= hi)
  idx = jnp.where(inside, lax.shift_right_logical(bits - lo, shift), _NBINS)
  return jnp.zeros(_NBINS, jnp.int32).at[idx].add(1, mode="drop")


def _window_shift(lo, hi):
  return jnp.maximum(_bit_length(hi - lo) - _HIST_BITS, 0)


def _resolve(hist, lo, shift, below, rank):
  """From a window histogram, the narrower window holding `rank` -> (lo, hi, below, found)."""
  cum = jnp.cumsum(hist)
  r = rank - below
  found = (r >= 0) & (r < cum[-1])
  j = jnp.searchsorted(cum, r, side="right").astype(jnp.int32)
  j = jnp.minimum(j, _NBINS - 1)
  new_below = below + jnp.where(j > 0, cum[jnp.maximum(j - 1, 0)], 0)
  new_lo = lo + lax.shift_left(j, shift)
  new_hi = new_lo + lax.shift_left(jnp.int32(1), shift) - 1
  # A miss restarts from every finite distance (below = 0): always correct, just slower.
  return (jnp.where(found, new_lo, 0), jnp.where(found, new_hi, _MAX_FINITE_BITS),
          jnp.where(found, new_below, 0), found)


def _chunks(n: int):
  """(number of full chunks, start of the overlapping tail chunk or None)."""
  n_full = n // _CHUNK
  return n_full, (n - _CHUNK if n % _CHUNK else None)


def _for_each_chunk(pred, true, mask, init, fn):
  """fn(carry, pred_c, true_c, valid_c) over fixed-size chunks; the tail chunk overlaps, masked."""
  n = pred.shape[0]
  n_full, tail_start = _chunks(n)

  def valid_of(start, first_new):
    idx = start + jnp.arange(_CHUNK, dtype=jnp.int32)
    v = idx >= first_new
    if mask is not None:
      v = v & lax.dynamic_slice_in_dim(mask, start, _CHUNK)
    return v

  def body(i, carry):
    start = i * _CHUNK
    return fn(carry, lax.dynamic_slice_in_dim(pred, start, _CHUNK),
              lax.dynamic_slice_in_dim(true, start, _CHUNK), valid_of(start, start))

  carry = lax.fori_loop(0, n_full, body, init)
  if tail_start is not None:
    carry = fn(carry, pred[tail_start:], true[tail_start:], valid_of(tail_start, n_full * _CHUNK))
  return carry


@jax.jit
def _table_kernel(pred, true, mask, h_thresholds):
  n_total = pred.shape[0]
  if n_total < _CHUNK:  # small inputs: pad to one chunk (cheap copies)
    pad = _CHUNK - n_total
    pred = jnp.pad(pred, ((0, pad), (0, 0)))
    true = jnp.pad(true, ((0, pad), (0, 0)))
    mask = jnp.pad(jnp.ones(n_total, bool) if mask is None else mask, (0, pad))
  n_valid = jnp.int32(n_total) if mask is None else jnp.sum(mask, dtype=jnp.int32)
  k_lo = jnp.maximum(n_valid - 1, 0) // 2
  k_hi = n_valid // 2

  # Window from a strided sample of the same distances.
  _, d_s = _chunk_distance(pred[::_SAMPLE_STRIDE], true[::_SAMPLE_STRIDE])
  valid_s = jnp.ones(d_s.shape, bool) if mask is None else mask[::_SAMPLE_STRIDE]
  bits_s = lax.bitcast_convert_type(d_s, jnp.int32)
  n_s = jnp.sum(valid_s, dtype=jnp.int32)
  idx_s = jnp.where(valid_s, lax.shift_right_logical(bits_s, _SAMPLE_SHIFT), 1 << 16)
  cum_s = jnp.cumsum(jnp.zeros(1 << 16, jnp.int32).at[idx_s].add(1, mode="drop"))
  scale = n_s.astype(jnp.float32) / jnp.maximum(n_valid, 1).astype(jnp.float32)
  slack = 3.0 * jnp.sqrt(n_s.astype(jnp.float32)) + 8.0
  r_lo = jnp.clip(jnp.floor(k_lo * scale - slack), 0, jnp.maximum(n_s - 1, 0)).astype(jnp.int32)
  r_hi = jnp.clip(jnp.ceil(k_hi * scale + slack), 0, jnp.maximum(n_s - 1, 0)).astype(jnp.int32)
  b_lo = jnp.searchsorted(cum_s, r_lo, side="right").astype(jnp.int32)
  b_hi = jnp.searchsorted(cum_s, r_hi, side="right").astype(jnp.int32)
  use_sample = n_s > 0
  lo = jnp.where(use_sample, lax.shift_left(b_lo, _SAMPLE_SHIFT), 0)
  hi = jnp.where(use_sample, jnp.minimum(lax.shift_left(b_hi + 1, _SAMPLE_SHIFT) - 1, _MAX_FINITE_BITS),
                 _MAX_FINITE_BITS)
  shift = _window_shift(lo, hi)
  n_thr = h_thresholds.shape[0]

  def stats(carry, pred_c, true_c, valid_c):
    counts, sum_d, sum_g, below, hist = carry
    h, d = _chunk_distance(pred_c, true_c)
    bits = lax.bitcast_convert_type(d, jnp.int32)
    within = jnp.where(valid_c[:, None] & (h[:, None] <= h_thresholds[None, :]), 1.0, 0.0)
    counts = counts + jnp.sum(within, axis=0).astype(jnp.int32)
    sum_d = _kahan_add(sum_d, jnp.sum(jnp.where(valid_c, d, 0.0)))
    g = jnp.where(valid_c, jnp.exp(d * jnp.float32(-1.0 / GEOSCORE_SCALE_KM)), 0.0)
    sum_g = _kahan_add(sum_g, jnp.sum(g))
    below = below + jnp.sum(jnp.where(valid_c & (bits < lo), 1.0, 0.0)).astype(jnp.int32)
    hist = hist + _histogram(bits, valid_c, lo, hi, shift)
    return counts, sum_d, sum_g, below, hist

  zero2 = (jnp.float32(0), jnp.float32(0))
  init = (jnp.zeros(n_thr, jnp.int32), zero2, zero2, jnp.int32(0), jnp.zeros(_NBINS, jnp.int32))
  counts, sum_d, sum_g, below, hist = _for_each_chunk(pred, true, mask, init, stats)

  # Per middle rank: (lo, hi, below) of a window holding it; exact once lo == hi.
  windows = [_resolve(hist, lo, shift, below, k)[:3] for k in (k_lo, k_hi)]
  state = tuple(jnp.stack(v) for v in zip(*windows))

  def not_done(state):
    lo2, hi2, _ = state
    return jnp.any(lo2 != hi2) & (n_valid > 0)

  def refine(state):
    lo2, hi2, below2 = state
    shift2 = _window_shift(lo2, hi2)

    def fn(hists, pred_c, true_c, valid_c):
      _, d = _chunk_distance(pred_c, true_c)
      bits = lax.bitcast_convert_type(d, jnp.int32)
      return tuple(hists[i] + _histogram(bits, valid_c, lo2[i], hi2[i], shift2[i]) for i in range(2))

    hists = _for_each_chunk(pred, true, mask, (jnp.zeros(_NBINS, jnp.int32),) * 2, fn)
    new = [_resolve(hists[i], lo2[i], shift2[i], below2[i], (k_lo, k_hi)[i])[:3] for i in range(2)]
    return tuple(jnp.stack(v) for v in zip(*new))

  lo2, _, _ = lax.while_loop(not_done, refine, state)
  middle = lax.bitcast_convert_type(lo2, jnp.float32)
  nf = jnp.maximum(n_valid, 1).astype(jnp.float32)
  empty = n_valid == 0
  nan = jnp.float32(jnp.nan)
  return {
      "counts": counts,
      "median_km": jnp.where(empty, nan, 0.5 * (middle[0] + middle[1])),
      "mean_km": jnp.where(empty, nan, sum_d[0] / nf),
      "geoscore": jnp.where(empty, nan, GEOSCORE_MAX * sum_g[0] / nf),
      "n": n_valid,
  }


def threshold_terms(thresholds_km: Sequence[float]) -> np.ndarray:
  """sin^2(t / 2R) per threshold: d <= t  <=>  h <= this (float64 value rounded to float32)."""
  t = np.asarray(thresholds_km, np.float64)
  return np.sin(np.minimum(t / (2 * EARTH_RADIUS_KM), np.pi / 2)) ** 2


def _check_latlon(x, name: str) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2 or x.shape[1] != 2:
    raise ValueError(f"{name} must be [N, 2] (lat, lon) degrees, got shape {x.shape}")
  return x


def accuracy_table(pred_latlon, true_latlon, thresholds_km: Sequence[float] = THRESHOLDS_KM,
                   mask=None) -> dict:
  """Share of pairs within each threshold (d <= t), median / mean km, GeoScore and count.

  pred_latlon, true_latlon: [N, 2] (lat, lon) degrees, lat in [-90, 90], lon in [-180, 180].
  mask: optional bool [N]; only True pairs count (padded eval batches). Empty -> NaN statistics, n = 0.
  Returns python floats keyed acc_{t}km, median_km, mean_km, geoscore, and n (int).
  """
  pred = _check_latlon(pred_latlon, "pred_latlon")
  true = _check_latlon(true_latlon, "true_latlon")
  if pred.shape != true.shape:
    raise ValueError(f"pred_latlon {pred.shape} and true_latlon {true.shape} differ in shape")
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != (pred.shape[0],):
      raise ValueError(f"mask must be bool [{pred.shape[0]}], got shape {mask.shape}")
    mask = mask.astype(bool)
  out = jax.device_get(_table_kernel(pred, true, mask,
                                     jnp.asarray(threshold_terms(thresholds_km), jnp.float32)))
  n = int(out["n"])
  table = {threshold_key(t): int(c) / n if n else float("nan") for t, c in zip(thresholds_km, out["counts"])}
  table.update(median_km=float(out["median_km"]), mean_km=float(out["mean_km"]),
               geoscore=float(out["geoscore"]), n=n)
  return table


def accuracy_table_numpy(pred_latlon, true_latlon, thresholds_km: Sequence[float] = THRESHOLDS_KM,
                         mask=None, dtype=np.float64) -> dict:
  """Straightforward numpy version of the same table (the reference for tests and benchmarks)."""
  p = np.radians(np.asarray(pred_latlon, dtype))
  t = np.radians(np.asarray(true_latlon, dtype))
  if mask is not None:
    m = np.asarray(mask, bool)
    p, t = p[m], t[m]
  h = (np.sin((t[:, 0] - p[:, 0]) / 2) ** 2
       + np.cos(p[:, 0]) * np.cos(t[:, 0]) * np.sin((t[:, 1] - p[:, 1]) / 2) ** 2)
  d = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
  n = d.shape[0]
  table = {threshold_key(x): float(np.mean(d <= x)) if n else float("nan") for x in thresholds_km}
  table.update(median_km=float(np.median(d)) if n else float("nan"),
               mean_km=float(d.mean()) if n else float("nan"),
               geoscore=float(np.mean(GEOSCORE_MAX * np.exp(-d / GEOSCORE_SCALE_KM))) if n else float("nan"),
               n=int(n))
  return table


def format_table(rows: Mapping[str, Mapping[str, float]],
                 thresholds_km: Sequence[float] = THRESHOLDS_KM) -> str:
  """The results table: one line per named row; accuracies in percent."""
  heads = [f"{THRESHOLD_NAMES.get(t, '')} {t:g} km".strip() for t in thresholds_km]
  heads += ["median km", "mean km", "GeoScore", "count"]
  name_w = max([len("")] + [len(k) for k in rows])
  widths = [max(len(h), 9) for h in heads]
  lines = [" " * name_w + "  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths))]
  for name, r in rows.items():
    cells = [f"{100 * r[threshold_key(t)]:.1f}%" for t in thresholds_km]
    cells += [f"{r['median_km']:.1f}", f"{r['mean_km']:.1f}", f"{r['geoscore']:.0f}", f"{int(r['n'])}"]
    lines.append(name.ljust(name_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
  return "\n".join(lines)
