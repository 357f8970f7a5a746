"""Geo-localization accuracy table: share within thresholds, median / mean km and GeoScore.

`accuracy_table` is one jitted kernel over static slices of 2^20 pairs (about 110 MB of temporaries for
10 M pairs; static slices vectorise far better on XLA:CPU than a dynamic-slice loop). It is compiled with
fast math (FMA contraction), the formulas' exact differences shielded by distance._opaque. Per slice:
  - d from polynomial sin/asin (distance.py), one fused loop;
  - one scatter-add per pair into a [2^18 + 2, T + 1] table: row = the pair's bin in the median window
    [lo, hi] of float32 bit patterns (non-negative floats order like their int32 bits), or below / above
    the window; column = number of thresholds the pair is within (d <= t, equality counts as within).
    Column sums give the threshold counts, row sums the window histogram and the count below it
    (XLA:CPU reductions of compare/select chains are slow, one small scatter is cheaper);
  - sums of d and 5000 exp(-d / 1492.7).
The window comes from a sample (1/16 of the pairs, in 64 evenly spaced blocks) and holds the middle
ranks with overwhelming probability (10 M random pairs: the first pass already ends on one bit pattern).
When a bin is wider than one pattern (small N), or the sample missed (adversarial orderings), further
histogram passes (_refine_kernel, driven from python) narrow the window until it is one pattern wide, so
the median is always exact: it equals the median of the kernel's own float32 distances, numpy-style
(mean of the two middle values for even counts). Thresholds are compared on d, which is within ~5e-7
relative of the float64 distance, so only pairs that close to a threshold can differ from a float64
decision.
"""
from __future__ import annotations

import functools
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

_SLICE = 1 << 20             # pairs per static slice; intermediates stay a few MB
_MAX_SLICES = 16             # more pairs -> bigger slices (slices are unrolled at trace time)
_SAMPLE_STRIDE = 16          # the sample holds 1/16 of the pairs ...
_SAMPLE_BLOCKS = 64          # ... in 64 evenly spaced contiguous blocks (a strided gather is 4x slower)
_HIST_BITS = 18
_NBINS = 1 << _HIST_BITS
_SAMPLE_SHIFT = 13           # sample histogram: float bits >> 13 ...
_SAMPLE_BINS = 1 << (31 - _SAMPLE_SHIFT)  # ... 2^18 bins cover every finite distance
_MAX_FINITE_BITS = 0x7F7FFFFF


def threshold_key(t: float) -> str:
  return f"acc_{t:g}km"


def _bit_length(x):
  return 32 - lax.clz(x.astype(jnp.int32))


def _distance_bits(pred_c, true_c, zero):
  h, q = haversine_terms(pred_c[:, 0], pred_c[:, 1], true_c[:, 0], true_c[:, 1], zero)
  d = terms_to_km(h, q)
  return d, lax.bitcast_convert_type(d, jnp.int32)


def _histogram(bits, valid, lo, hi, shift):
  inside = (bits >= lo) & (bits <= hi)
  if valid is not None:
    inside = inside & valid
  idx = jnp.where(inside, lax.shift_right_logical(bits - lo, shift), _NBINS)
  return jnp.zeros(_NBINS, jnp.int32).at[idx].add(1, mode="drop")


def _window_shift(lo, hi):
  return jnp.maximum(_bit_length(hi - lo) - _HIST_BITS, 0)


def _resolve(hist, lo, shift, below, rank):
  """From a window histogram, the narrower window holding `rank` -> (lo, hi, below)."""
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
          jnp.where(found, new_below, 0))


def _slices(n: int) -> list[tuple[int, int]]:
  size = max(_SLICE, -(-n // _MAX_SLICES))
  return [(s, min(s + size, n)) for s in range(0, n, size)]


def _for_each_slice(pred, true, mask, init, fn, chain=False):
  """fn(carry, pred_s, true_s, valid_s or None) over static slices: XLA:CPU vectorises these well and runs
  independent slices concurrently (a dynamic-slice loop ran about 2x slower)."""
  if chain:  # carry from slice to slice (lets a scatter update one table in place)
    carry = init
    for a, b in _slices(pred.shape[0]):
      carry = fn(carry, pred[a:b], true[a:b], None if mask is None else mask[a:b])
    return carry
  # Each slice starts from `init` and the results are added at the end: no chain between slices, so
  # XLA's runtime may run them concurrently.
  parts = [fn(init, pred[a:b], true[a:b], None if mask is None else mask[a:b])
           for a, b in _slices(pred.shape[0])]
  if not parts:
    return init
  return jax.tree.map(lambda *xs: functools.reduce(jnp.add, xs), *parts)


def _sample_rows(n: int):
  """A static row selection of about n / _SAMPLE_STRIDE rows: evenly spaced contiguous blocks."""
  block = n // (_SAMPLE_STRIDE * _SAMPLE_BLOCKS)
  if block < 64:
    return lambda x: x[::_SAMPLE_STRIDE]
  starts = [(i * n) // _SAMPLE_BLOCKS for i in range(_SAMPLE_BLOCKS)]
  return lambda x: jnp.concatenate([x[s:s + block] for s in starts])


def _masked(x, valid, fill):
  return x if valid is None else jnp.where(valid, x, fill)


# Fast math lets LLVM contract the polynomials into FMAs (4x on a plain FMA chain here, a few % on this
# kernel, which is bound by its 6 polynomials, 2 sqrt and the histograms); the formulas' exact differences
# are shielded from reassociation by distance._opaque (`zero`), and tests check the float64 agreement.
_FAST_MATH = {"xla_cpu_enable_fast_math": True, "xla_cpu_fast_math_honor_nans": True,
              "xla_cpu_fast_math_honor_infs": True, "xla_cpu_enable_fast_min_max": True}


def _table_kernel_impl(pred, true, mask, thresholds, zero):
  """thresholds: float32 [T] ascending; zero: int32 0 (see distance._opaque)."""
  n_total = pred.shape[0]
  n_thr = thresholds.shape[0]
  n_valid = jnp.int32(n_total) if mask is None else jnp.sum(mask, dtype=jnp.int32)
  k_lo = jnp.maximum(n_valid - 1, 0) // 2
  k_hi = n_valid // 2

  # Window from a strided sample of the same distances.
  take = _sample_rows(n_total)
  _, bits_s = _distance_bits(take(pred), take(true), zero)
  valid_s = None if mask is None else take(mask)
  n_s = jnp.int32(bits_s.shape[0]) if mask is None else jnp.sum(valid_s, dtype=jnp.int32)
  idx_s = _masked(lax.shift_right_logical(bits_s, _SAMPLE_SHIFT), valid_s, _SAMPLE_BINS)
  cum_s = jnp.cumsum(jnp.zeros(_SAMPLE_BINS, jnp.int32).at[idx_s].add(1, mode="drop"))
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
  n_k = n_thr + 1

  def stats(carry, pred_s, true_s, valid_s):
    table, sum_d, sum_g = carry
    d, bits = _distance_bits(pred_s, true_s, zero)
    # One scatter per pair (XLA:CPU scatters cost a few ns per update, the dominant cost here) fills a
    # [NBINS + 2, T + 1] table: row = window bin, or NBINS below / NBINS + 1 above the window; column k =
    # number of (ascending) thresholds d is within. Only in-window pairs touch the big rows.
    k = sum(jnp.where(d <= thresholds[j], 1, 0) for j in range(n_thr))
    row = jnp.where(bits < lo, _NBINS,
                    jnp.where(bits > hi, _NBINS + 1, lax.shift_right_logical(bits - lo, shift)))
    idx = _masked(row * n_k + k, valid_s, (_NBINS + 2) * n_k)
    table = table.at[idx].add(1, mode="drop")
    sum_d = sum_d + jnp.sum(_masked(d, valid_s, 0.0))
    g = jnp.exp(d * jnp.float32(-1.0 / GEOSCORE_SCALE_KM))
    sum_g = sum_g + jnp.sum(_masked(g, valid_s, 0.0))
    return table, sum_d, sum_g

  init = (jnp.zeros((_NBINS + 2) * n_k, jnp.int32), jnp.float32(0), jnp.float32(0))
  table, sum_d, sum_g = _for_each_slice(pred, true, mask, init, stats, chain=True)
  table = table.reshape(_NBINS + 2, n_k)
  by_k = jnp.sum(table, axis=0)
  counts = jnp.cumsum(by_k[::-1])[:n_thr]   # ascending threshold j <=> k >= n_thr - j
  hist = jnp.sum(table[:_NBINS], axis=1)
  below = jnp.sum(table[_NBINS])

  # Per middle rank: (lo, hi, below) of a window holding it; exact once lo == hi. Windows still wider
  # go to _refine_kernel, called from python: a while loop here made XLA hoist every slice's distances
  # out of the loop and keep them all alive.
  ranks = jnp.stack([k_lo, k_hi])
  windows = [_resolve(hist, lo, shift, below, k) for k in (k_lo, k_hi)]
  lo2, hi2, below2 = (jnp.stack(v) for v in zip(*windows))
  nf = jnp.maximum(n_valid, 1).astype(jnp.float32)
  empty = n_valid == 0
  nan = jnp.float32(jnp.nan)
  return {
      "counts": counts,
      "mean_km": jnp.where(empty, nan, sum_d / nf),
      "geoscore": jnp.where(empty, nan, GEOSCORE_MAX * sum_g / nf),
      "n": n_valid,
      "window": (lo2, hi2, below2, ranks),
  }


def _refine_impl(pred, true, mask, window, zero):
  """One more histogram pass per middle rank whose window is wider than one bit pattern."""
  lo2, hi2, below2, ranks = window
  shift2 = _window_shift(lo2, hi2)

  def fn(hists, pred_s, true_s, valid_s):
    _, bits = _distance_bits(pred_s, true_s, zero)
    return tuple(hists[i] + _histogram(bits, valid_s, lo2[i], hi2[i], shift2[i]) for i in range(2))

  hists = _for_each_slice(pred, true, mask, (jnp.zeros(_NBINS, jnp.int32),) * 2, fn)
  new = [_resolve(hists[i], lo2[i], shift2[i], below2[i], ranks[i]) for i in range(2)]
  lo3, hi3, below3 = (jnp.stack(v) for v in zip(*new))
  return lo3, hi3, below3, ranks



_table_kernel = jax.jit(_table_kernel_impl, compiler_options=_FAST_MATH)
_refine_kernel = jax.jit(_refine_impl, compiler_options=_FAST_MATH)


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
  order = np.argsort(np.asarray(thresholds_km, np.float64), kind="stable")
  ascending = np.asarray(thresholds_km, np.float32)[order]
  zero = jnp.int32(0)
  out = _table_kernel(pred, true, mask, jnp.asarray(ascending), zero)
  window = out.pop("window")
  out = jax.device_get(out)
  n = int(out["n"])
  median = float("nan")
  if n:
    for _ in range(8):  # each pass narrows a window by 2^17 bit patterns; 2 passes cover any window
      lo2, hi2 = np.asarray(window[0]), np.asarray(window[1])
      if (lo2 == hi2).all():
        break
      window = _refine_kernel(pred, true, mask, window, zero)
    middle = np.asarray(window[0]).astype(np.int32).view(np.float32)
    median = float(np.float32(0.5) * (middle[0] + middle[1]))
  counts = np.empty(len(order), np.int64)
  counts[order] = out["counts"]
  table = {threshold_key(t): int(c) / n if n else float("nan") for t, c in zip(thresholds_km, counts)}
  table.update(median_km=median, mean_km=float(out["mean_km"]),
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
