"""Geo-localization accuracy table: share within thresholds, median / mean km and GeoScore.

`accuracy_table` = one jitted kernel (`_table_kernel`: distances, sums) + one host pass over its output
(threshold counts, exact median by selection), each piece where XLA:CPU or numpy is fast (the figures:
benchmarks/README.md):
  - the kernel computes every pair's distance d (polynomial sin/asin, distance.py) in fused loops over
    pieces of 2^20 pairs, compiled with fast math (the formulas' exact differences are shielded by
    distance._opaque), and returns d as those pieces (fresh large buffers fault their pages in on every call);
    an optimization_barrier keeps XLA from re-deriving the distance formula inside each consumer;
  - per piece it sums d and exp(-d / 1492.7) (plain sums go to XLA:CPU's fast reduce);
  - threshold counts and the median are done on the host, in cache-sized chunks on two threads: XLA:CPU has
    slow reductions of compares and no fast selection or compaction;
  - the median is selected, not sorted: a strided sample (prime stride, so periodic layouts cannot alias
    with it) brackets the two middle ranks, the counting pass also counts the values below the bracket
    and compacts those inside it, and np.partition picks the ranks there. If the bracket misses (adversarial
    layouts), everything is partitioned: the median is always exact, the median of the kernel's own float32
    distances, numpy-style (mean of the two middle values for even counts).
Inputs: float32 numpy arrays reach the kernel without a copy: jax.device_put aliases 64-byte aligned
arrays on CPU, so a misaligned one is passed as its first few rows (copied) plus the aligned rest;
other numpy inputs are copied piece by piece.
Thresholds are compared on d, which is within ~4e-7 relative of the float64 distance, so only pairs that
close to a threshold can differ from a float64 decision.
"""
from __future__ import annotations

import concurrent.futures
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from translocator_jax.geo.distance import EARTH_RADIUS_KM, haversine_terms, terms_to_km

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0

_PIECE = 1 << 20             # pairs per kernel piece (4 MB of distances)
_CHUNK = 1 << 17             # host pass: values per numpy call (masks stay in cache)
_SAMPLE_STRIDE = 61          # median bracket sample: every 61st value (prime: no aliasing with periodic data)
_SMALL = 1 << 16             # fewer values: partition them all
_ALIGN = 64                  # numpy buffers aligned like this are aliased by jax.device_put on CPU


def threshold_key(t: float) -> str:
  return f"acc_{t:g}km"


ACC_KEYS = tuple(threshold_key(t) for t in THRESHOLDS_KM)  # acc_1km ... acc_2500km


# Fast math lets LLVM contract the polynomials into FMAs; the formulas' exact differences are shielded from
# reassociation by distance._opaque (`zero`), and tests check the float64 agreement.
_FAST_MATH = {"xla_cpu_enable_fast_math": True, "xla_cpu_fast_math_honor_nans": True,
              "xla_cpu_fast_math_honor_infs": True, "xla_cpu_enable_fast_min_max": True}


def _bounds(n: int) -> list[tuple[int, int]]:
  return [(a, min(a + _PIECE, n)) for a in range(0, n, _PIECE)]


def _take(x, a: int, b: int):
  """Rows [a, b) of a kernel operand: an array; a list of its pieces (_bounds); or {"head": first rows,
  "rest": the others} (a numpy array aliased past its misaligned first rows, see _kernel_input)."""
  if isinstance(x, (list, tuple)):
    return x[a // _PIECE]
  if isinstance(x, dict):
    h = x["head"].shape[0]
    if a >= h:
      return x["rest"][a - h:b - h]
    return jnp.concatenate([x["head"][a:], x["rest"][:b - h]])
  return x[a:b]


def _table_kernel_impl(pred, true, mask, geo_scale, zero):
  """pred, true: [N, 2] kernel operands (see _take); mask likewise, bool [N], or None; geo_scale: float32
  -1/1492.7 (a runtime value: XLA would broadcast a constant into a full-size extra input of the
  reduction); zero: int32 0 (see distance._opaque). Pieces are always rows [k 2^20, (k + 1) 2^20), so
  the float sums do not depend on how the operands arrived.

  Returns (list of distance pieces, float32 with +inf where masked out; per-piece sums of d and of
  exp(-d / 1492.7) over valid pairs; scratch pieces to drop). The number of valid pairs is counted by
  the caller: integer reductions are slow on XLA:CPU."""
  n = sum(x.shape[0] for x in jax.tree.leaves(pred))
  bounds = _bounds(n)
  pred, true = ([_take(x, a, b) for a, b in bounds] for x in (pred, true))
  valids = [None] * len(bounds) if mask is None else [_take(mask, a, b) for a, b in bounds]
  pieces, sum_d, sum_g, scratch = [], [], [], []
  for p, t, valid in zip(pred, true, valids):
    h, q = haversine_terms(p[:, 0], p[:, 1], t[:, 0], t[:, 1], zero)
    d = lax.optimization_barrier(terms_to_km(h, q))
    if valid is not None:
      # +inf: within no threshold, exp(-inf) = 0, ranks last. Selects are materialised: inside a
      # reduction they leave XLA:CPU's fast reduce.
      d_sum, d = lax.optimization_barrier((jnp.where(valid, d, 0.0), jnp.where(valid, d, jnp.inf)))
      scratch.append(d_sum)  # returned, not kept: a 4 MB output is cheaper than a 40 MB fresh temp
    else:
      d_sum = d
    sum_d.append(jnp.sum(d_sum))
    sum_g.append(jnp.sum(jnp.exp(d * geo_scale)))
    pieces.append(d)
  if not pieces:
    return [], jnp.zeros(0), jnp.zeros(0), []
  return pieces, jnp.stack(sum_d), jnp.stack(sum_g), scratch


_table_kernel = jax.jit(_table_kernel_impl, compiler_options=_FAST_MATH)


def _aligned(x: np.ndarray, dtype) -> np.ndarray:
  """x as dtype: itself when already C-contiguous and 64-byte aligned, else an aligned copy."""
  if x.dtype == dtype and x.flags.c_contiguous and x.ctypes.data % _ALIGN == 0:
    return x
  buf = np.empty(x.size * np.dtype(dtype).itemsize + _ALIGN, np.uint8)
  offset = (-buf.ctypes.data) % _ALIGN
  y = buf[offset:offset + x.size * np.dtype(dtype).itemsize].view(dtype).reshape(x.shape)
  np.copyto(y, x, casting="unsafe")  # like astype
  return y


def _check_input(x, name: str, shape_msg: str, ndim: int):
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  if x.ndim != ndim or (ndim == 2 and x.shape[1] != 2):
    raise ValueError(f"{name} must be {shape_msg}, got shape {x.shape}")
  return x


def _rows_to_alignment(x, dtype) -> int | None:
  """Leading rows to skip so that the rest of numpy x starts 64-byte aligned (None: x must be copied)."""
  if isinstance(x, jax.Array) or x.dtype != dtype or not x.flags.c_contiguous:
    return None
  row = x.itemsize * (x.shape[1] if x.ndim == 2 else 1)
  gap = (-x.ctypes.data) % _ALIGN
  return gap // row if gap % row == 0 else None


def _kernel_input(x, dtype):
  """x as a kernel operand (see _take): a jax array as it is; a float32 numpy array aliased (jax.device_put
  does not copy 64-byte aligned arrays on CPU), past its first few rows if they are misaligned; others
  copied piece by piece: 8 MB buffers come back from the allocator already mapped, an 80 MB one faults
  its pages in on every call."""
  if isinstance(x, jax.Array):
    return x.astype(dtype)
  head = _rows_to_alignment(x, dtype)
  if head == 0:
    return jax.device_put(x)
  if head is not None and head < x.shape[0]:
    return {"head": jax.device_put(_aligned(x[:head], dtype)), "rest": jax.device_put(x[head:])}
  return [jax.device_put(_aligned(x[a:b], dtype)) for a, b in _bounds(x.shape[0])]


def _middle(values: np.ndarray, k_lo: int, k_hi: int) -> float:
  v = np.partition(values, (k_lo, k_hi))
  return float(np.float32(0.5) * (v[k_lo] + v[k_hi]))


def _scan(pieces: list[np.ndarray], thresholds: np.ndarray, lo, hi) -> tuple[np.ndarray, int, list]:
  """(count of d <= t per threshold, count of d < lo, the values lo <= d <= hi) in cache-sized chunks;
  lo = None: no bracket."""
  counts = np.zeros(len(thresholds), np.int64)
  mask_a = np.empty(_CHUNK, bool)
  mask_b = np.empty(_CHUNK, bool)
  n_below = 0
  inside = []
  for piece in pieces:
    for a in range(0, piece.shape[0], _CHUNK):
      x = piece[a:a + _CHUNK]
      ma, mb = mask_a[:x.shape[0]], mask_b[:x.shape[0]]
      for j, t in enumerate(thresholds):
        np.less_equal(x, t, out=ma)
        counts[j] += np.count_nonzero(ma)
      if lo is not None:
        np.less(x, lo, out=ma)
        n_below += int(np.count_nonzero(ma))
        np.less_equal(x, hi, out=mb)
        np.not_equal(mb, ma, out=mb)           # lo <= x <= hi (x < lo implies x <= hi)
        inside.append(x[np.flatnonzero(mb)])
  return counts, n_below, inside


def _host_pass(pieces: list[np.ndarray], thresholds: np.ndarray, n_valid: int) -> tuple[np.ndarray, float]:
  """(count of d <= t per threshold, exact median of the n_valid smallest d) over the distance pieces
  (float32, +inf where masked out), in one chunked pass."""
  n = sum(x.shape[0] for x in pieces)
  k_lo, k_hi = (n_valid - 1) // 2, n_valid // 2
  bracket = n_valid > 0 and n > _SMALL
  if bracket:  # the two middle ranks lie in [lo, hi] unless the sample is unrepresentative
    sample = np.concatenate([x[::_SAMPLE_STRIDE] for x in pieces])
    m = sample.shape[0]
    slack = int(4.0 * np.sqrt(m)) + 16
    r_lo = min(max(k_lo * m // n - slack, 0), m - 1)
    r_hi = min(k_hi * m // n + slack, m - 1)
    sample = np.partition(sample, (r_lo, r_hi))
    lo, hi = sample[r_lo], sample[r_hi]
  else:
    lo = hi = None
  # Two halves on two threads: numpy releases the GIL, so both cores count.
  if len(pieces) > 1:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      parts = list(pool.map(lambda ps: _scan(ps, thresholds, lo, hi), [pieces[::2], pieces[1::2]]))
  else:
    parts = [_scan(pieces, thresholds, lo, hi)]
  counts = sum(p[0] for p in parts)
  n_below = sum(p[1] for p in parts)
  inside = [x for p in parts for x in p[2]]
  if not n_valid:
    return counts, float("nan")
  if bracket:
    inside = np.concatenate(inside) if inside else np.zeros(0, np.float32)
    if n_below <= k_lo and n_below + inside.shape[0] > k_hi:
      return counts, _middle(inside, k_lo - n_below, k_hi - n_below)
  return counts, _middle(np.concatenate(pieces), k_lo, k_hi)  # small, or the sample missed the middle


def accuracy_table(pred_latlon, true_latlon, thresholds_km: Sequence[float] = THRESHOLDS_KM,
                   mask=None) -> dict:
  """Share of pairs within each threshold (d <= t), median / mean km, GeoScore and count.

  pred_latlon, true_latlon: [N, 2] (lat, lon) degrees, lat in [-90, 90], lon in [-180, 180] (numpy or
    jax arrays; numpy float32 arrays aligned to 64 bytes are used without a copy).
  mask: optional bool [N]; only True pairs count (padded eval batches). Empty -> NaN statistics, n = 0.
  Returns python floats keyed acc_{t}km, median_km, mean_km, geoscore, and n (int).
  """
  latlon_msg = "[N, 2] (lat, lon) degrees"
  pred = _check_input(pred_latlon, "pred_latlon", latlon_msg, 2)
  true = _check_input(true_latlon, "true_latlon", latlon_msg, 2)
  if pred.shape != true.shape:
    raise ValueError(f"pred_latlon {pred.shape} and true_latlon {true.shape} differ in shape")
  n_total = pred.shape[0]
  if mask is not None:
    mask = _check_input(mask, "mask", f"bool [{n_total}]", 1)
    if mask.shape != (n_total,):
      raise ValueError(f"mask must be bool [{n_total}], got shape {mask.shape}")
  pred, true = _kernel_input(pred, np.float32), _kernel_input(true, np.float32)
  n = n_total
  if mask is not None:
    n = int(np.count_nonzero(np.asarray(mask)))  # nonzero = True, as the kernel's astype(bool)
    mask = _kernel_input(mask, bool)
  geo_scale = jnp.float32(-1.0 / GEOSCORE_SCALE_KM)
  pieces, sum_d, sum_g, _ = _table_kernel(pred, true, mask, geo_scale, jnp.int32(0))
  counts, median = _host_pass([np.asarray(x) for x in pieces], np.asarray(thresholds_km, np.float32), n)
  nan = float("nan")
  table = {threshold_key(t): int(c) / n if n else nan for t, c in zip(thresholds_km, counts)}
  table.update(median_km=median,
               mean_km=float(np.sum(np.asarray(sum_d), dtype=np.float64)) / n if n else nan,
               geoscore=GEOSCORE_MAX * float(np.sum(np.asarray(sum_g), dtype=np.float64)) / n if n else nan,
               n=n)
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


def format_table(rows: Sequence[tuple[str, Mapping[str, float] | None]] | Mapping[str, Mapping[str, float]],
                 thresholds_km: Sequence[float] = THRESHOLDS_KM, mean_km: bool = False) -> str:
  """The results table in the paper's layout: one line per (name, table) row, % within each threshold, median km
  (mean km when asked), GeoScore and count. A None table is a blank line; a missing value is left blank."""
  rows = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
  keys = [threshold_key(t) for t in thresholds_km]
  width = max([50] + [len(name) + 2 for name, t in rows if t is not None])  # long row names keep the columns aligned
  head = f"{'':{width}s}" + "".join(f"{f'{t:g} km':>9s}" for t in thresholds_km) + f"{'median km':>11s}"
  head += (f"{'mean km':>11s}" if mean_km else "") + f"{'GeoScore':>10s}" + f"{'n':>8s}"
  lines = [head, "-" * len(head)]
  for name, t in rows:
    if t is None:
      lines.append("")
      continue
    accs = "".join(f"{100.0 * t[k]:9.1f}" if k in t else f"{'':9s}" for k in keys)
    med = f"{t['median_km']:11.1f}" if "median_km" in t else f"{'-':>11s}"
    if mean_km:
      med += f"{t['mean_km']:11.1f}" if "mean_km" in t else f"{'-':>11s}"
    gs = f"{t['geoscore']:10.1f}" if "geoscore" in t else f"{'-':>10s}"
    n = f"{int(t['n']):8d}" if "n" in t else f"{'':8s}"
    lines.append(f"{name:{width}s}{accs}{med}{gs}{n}")
  return "\n".join(lines)
