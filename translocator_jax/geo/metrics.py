"""Geo-localization accuracy table: share within thresholds, median / mean km and GeoScore.

`accuracy_table` = one jitted kernel (`_table_kernel`) + an exact median selected on the host:
  - the kernel computes every pair's distance d (polynomial sin/asin, distance.py) in one fused loop,
    compiled with fast math (FMA contraction; the formulas' exact differences are shielded by
    distance._opaque), and materialises d once (optimization_barrier: otherwise XLA re-derives the
    distance formula inside every consumer);
  - sums of d and of exp(-d / 1492.7), and the threshold counts, are plain float reductions over d.
    A count is the sum of a 0/1 step built from max/mul/min (d > t <=> max(d - t, 0) * 2^126 >= 1):
    XLA:CPU hands such reductions to its fast (YNNPACK) reduce, while compare/select or integer
    reductions fall back to a loop about 10x slower. Float sums of 0/1 are exact below 2^24 terms, so
    counts are summed in chunks of 2^24;
  - the median is selected, not sorted: a strided sample (prime stride, so periodic layouts cannot
    alias with it) brackets the two middle ranks, one pass counts the values below the bracket and
    compacts those inside it (about 2% of them for 10 M random pairs; in cache-sized chunks), and np.partition picks the
    ranks there. If the bracket misses (adversarial orderings), the whole array is partitioned: the
    median is always exact, the median of the kernel's own float32 distances, numpy-style (mean of
    the two middle values for even counts). XLA:CPU has no fast selection or compaction (sort of 10 M
    values ~3 s, jnp.nonzero ~0.5 s, top_k ~0.2 s, scatter ~6 ns per update), numpy's is ~10 ms here.
Inputs: numpy arrays aligned to 64 bytes reach the kernel without a copy (jax.device_put aliases them
on CPU); other numpy inputs get one aligned float32 copy (~8 ms for 10 M pairs; jnp.asarray took ~100).
Thresholds are compared on d, which is within ~5e-7 relative of the float64 distance, so only pairs that
close to a threshold can differ from a float64 decision.
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

_COUNT_CHUNK = 1 << 24       # float32 sums of 0/1 values are exact up to 2^24 terms
_SAMPLE_STRIDE = 61          # median bracket sample: every 61st value (prime: no aliasing with periodic data)
_SMALL = 1 << 16             # fewer values: partition them all
_ALIGN = 64                  # numpy buffers aligned like this are aliased by jax.device_put on CPU


def threshold_key(t: float) -> str:
  return f"acc_{t:g}km"


# Fast math lets LLVM contract the polynomials into FMAs; the formulas' exact differences are shielded from
# reassociation by distance._opaque (`zero`), and tests check the float64 agreement.
_FAST_MATH = {"xla_cpu_enable_fast_math": True, "xla_cpu_fast_math_honor_nans": True,
              "xla_cpu_fast_math_honor_infs": True, "xla_cpu_enable_fast_min_max": True}


def _table_kernel_impl(pred, true, mask, thresholds, consts, zero):
  """thresholds: float32 [T]; consts: float32 [0, 1, 2^126, -1/1492.7] as runtime values (constants
  would be broadcast and materialised as extra reduction inputs); zero: int32 0 (see distance._opaque).

  Returns (d [N] float32 with +inf where masked out, sums)."""
  n_total = pred.shape[0]
  h, q = haversine_terms(pred[:, 0], pred[:, 1], true[:, 0], true[:, 1], zero)
  d = lax.optimization_barrier(terms_to_km(h, q))
  if mask is None:
    n_valid = jnp.int32(n_total)
    d_for_sum = d
  else:
    n_valid = jnp.sum(mask, dtype=jnp.int32)
    d_for_sum = jnp.where(mask, d, 0.0)
    d = jnp.where(mask, d, jnp.inf)   # +inf: beyond every threshold, exp(-inf) = 0, ranks last
  c_zero, c_one, c_big, c_geo = consts[0], consts[1], consts[2], consts[3]
  beyond = jnp.zeros(thresholds.shape, jnp.int32)
  for a in range(0, n_total, _COUNT_CHUNK):
    chunk = d[None, a:a + _COUNT_CHUNK]
    step = jnp.minimum(jnp.maximum(chunk - thresholds[:, None], c_zero) * c_big, c_one)  # 1 where d > t
    beyond = beyond + jnp.sum(step, axis=1).astype(jnp.int32)
  sums = {"counts": n_total - beyond,  # masked pairs (+inf) are beyond every threshold
           "sum_d": jnp.sum(d_for_sum), "sum_g": jnp.sum(jnp.exp(d * c_geo)),
          "n": n_valid}
  return d, sums


_table_kernel = jax.jit(_table_kernel_impl, compiler_options=_FAST_MATH)
_CONSTS = (0.0, 1.0, 2.0 ** 126, -1.0 / GEOSCORE_SCALE_KM)


def _aligned(x: np.ndarray) -> np.ndarray:
  """x itself when C-contiguous and 64-byte aligned, else an aligned copy."""
  if x.flags.c_contiguous and x.ctypes.data % _ALIGN == 0:
    return x
  buf = np.empty(x.nbytes + _ALIGN, np.uint8)
  offset = (-buf.ctypes.data) % _ALIGN
  y = buf[offset:offset + x.nbytes].view(x.dtype).reshape(x.shape)
  np.copyto(y, x)
  return y


def _to_device(x, dtype, name: str, shape_msg: str, ndim: int) -> jax.Array:
  if isinstance(x, jax.Array):
    if x.ndim != ndim:
      raise ValueError(f"{name} must be {shape_msg}, got shape {x.shape}")
    return x.astype(dtype)
  x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must be {shape_msg}, got shape {x.shape}")
  return jax.device_put(_aligned(x.astype(dtype, copy=False)))


def _check_latlon(x, name: str) -> jax.Array:
  x = _to_device(x, jnp.float32, name, "[N, 2] (lat, lon) degrees", 2)
  if x.shape[1] != 2:
    raise ValueError(f"{name} must be [N, 2] (lat, lon) degrees, got shape {x.shape}")
  return x


def _middle(values: np.ndarray, k_lo: int, k_hi: int) -> float:
  v = np.partition(values, (k_lo, k_hi))
  return float(np.float32(0.5) * (v[k_lo] + v[k_hi]))


def _median_exact(d: np.ndarray, n_valid: int) -> float:
  """Median of the first n_valid order statistics of d (float32, the rest +inf), by selection."""
  k_lo, k_hi = (n_valid - 1) // 2, n_valid // 2
  n = d.shape[0]
  if n <= _SMALL:
    return _middle(d, k_lo, k_hi)
  sample = d[::_SAMPLE_STRIDE]
  m = sample.shape[0]
  slack = int(4.0 * np.sqrt(m)) + 16
  r_lo = min(max(k_lo * m // n - slack, 0), m - 1)
  r_hi = min(k_hi * m // n + slack, m - 1)
  sample = np.partition(sample, (r_lo, r_hi))
  n_below, inside = _bracket(d, sample[r_lo], sample[r_hi])
  if n_below <= k_lo and n_below + inside.shape[0] > k_hi:
    return _middle(inside, k_lo - n_below, k_hi - n_below)
  return _middle(d, k_lo, k_hi)  # the sample missed the middle: select over everything


def _bracket(d: np.ndarray, lo, hi, chunk: int = 1 << 16) -> tuple[int, np.ndarray]:
  """(count of d < lo, the values lo <= d <= hi), in cache-sized chunks: whole-array temporaries cost
  2-3x more here (fresh 10 MB masks fault their pages in on every call)."""
  below = np.empty(chunk, bool)
  upto = np.empty(chunk, bool)
  n_below = 0
  parts = []
  for a in range(0, d.shape[0], chunk):
    x = d[a:a + chunk]
    b, u = below[:x.shape[0]], upto[:x.shape[0]]
    np.less(x, lo, out=b)
    n_below += int(np.count_nonzero(b))
    np.less_equal(x, hi, out=u)
    np.not_equal(u, b, out=u)          # lo <= x <= hi (below implies upto)
    parts.append(x[np.flatnonzero(u)])
  return n_below, np.concatenate(parts)


def accuracy_table(pred_latlon, true_latlon, thresholds_km: Sequence[float] = THRESHOLDS_KM,
                   mask=None) -> dict:
  """Share of pairs within each threshold (d <= t), median / mean km, GeoScore and count.

  pred_latlon, true_latlon: [N, 2] (lat, lon) degrees, lat in [-90, 90], lon in [-180, 180] (numpy or
    jax arrays; numpy float32 arrays aligned to 64 bytes are used without a copy).
  mask: optional bool [N]; only True pairs count (padded eval batches). Empty -> NaN statistics, n = 0.
  Returns python floats keyed acc_{t}km, median_km, mean_km, geoscore, and n (int).
  """
  pred = _check_latlon(pred_latlon, "pred_latlon")
  true = _check_latlon(true_latlon, "true_latlon")
  if pred.shape != true.shape:
    raise ValueError(f"pred_latlon {pred.shape} and true_latlon {true.shape} differ in shape")
  if mask is not None:
    mask = _to_device(mask, bool, "mask", f"bool [{pred.shape[0]}]", 1)
    if mask.shape != (pred.shape[0],):
      raise ValueError(f"mask must be bool [{pred.shape[0]}], got shape {mask.shape}")
  thresholds = jnp.asarray(np.asarray(thresholds_km, np.float32))
  d, sums = _table_kernel(pred, true, mask, thresholds, jnp.asarray(np.float32(_CONSTS)), jnp.int32(0))
  sums = jax.device_get(sums)
  n = int(sums["n"])
  nan = float("nan")
  median = _median_exact(np.asarray(d), n) if n else nan
  table = {threshold_key(t): int(c) / n if n else nan for t, c in zip(thresholds_km, sums["counts"])}
  table.update(median_km=median, mean_km=float(sums["sum_d"]) / n if n else nan,
               geoscore=GEOSCORE_MAX * float(sums["sum_g"]) / n if n else nan, n=n)
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
