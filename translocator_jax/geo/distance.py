"""Great-circle (haversine) distance on float32 (lat, lon) degree arrays, R = 6371 km.

XLA's CPU sin/cos/asin are slow, so everything is built from two small polynomials (sin on [0, pi/2],
asin on [0, 1/2]) with arguments arranged so that each evaluation is accurate relative to its result:

  h = sin^2(d / 2R) = sin^2(dlat/2) cos^2(dlon/2) + cos^2(lat_m) sin^2(dlon/2)
  q = 1 - h         = cos^2(dlat/2) cos^2(dlon/2) + sin^2(lat_m) sin^2(dlon/2),   lat_m = (lat1 + lat2) / 2

Both are sums of non-negative terms, so neither cancels: h keeps full precision for short distances and q
for nearly antipodal ones. Angles stay in degrees until the polynomial: dlat = lat2 - lat1 is exact for
nearby points, dlon is folded to [0, 180] without rounding 360 - |dlon| (it is (180-|lon1|) + (180-|lon2|)),
cos(x) = sin(90 - x) in degrees, and 90 - |lat_m| is summed from
90 - |lat1| and 90 - |lat2|. Then d = 2R asin(sqrt(h)) when h <= q, else 2R (pi/2 - asin(sqrt(q))), with
one asin polynomial on [0, sin(pi/4)] (one sqrt, no range reduction): identical points give exactly 0,
antipodal points pi * R, and rounding never gives NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EARTH_RADIUS_KM = 6371.0

# sin(x) = x + x * y * P(y), y = x^2, x in [0, pi/2] (relative-error fit, approximation error < 1e-8).
_SIN_COEFFS = (-1.66666596e-01, 8.33306625e-03, -1.98096030e-04, 2.60578077e-06)
# asin(x) = x + x * z * Q(z), z = x^2 in [0, 0.5002] (relative-error fit of degree 7, approximation error
# 2.2e-9; evaluated in float32 the peak relative error is 6.3e-8, float32 rounding).
_ASIN_COEFFS = (0.16666622459888458, 0.07502693682909012, 0.044079769402742386, 0.03600898012518883,
                -0.008141371421515942, 0.11054528504610062, -0.1402541846036911, 0.12626807391643524)

_HALF_DEG = np.float32(np.pi / 360.0)   # degrees -> half-angle radians
_DEG = np.float32(np.pi / 180.0)
_HALF_PI = np.float32(np.pi / 2.0)
_TWO_R = np.float32(2.0 * EARTH_RADIUS_KM)


def sin_poly(x: jax.Array) -> jax.Array:
  """sin(x) for float32 x in [-pi/2, pi/2] (odd polynomial, no range reduction)."""
  y = x * x
  p = jnp.float32(_SIN_COEFFS[-1])
  for c in _SIN_COEFFS[-2::-1]:
    p = p * y + jnp.float32(c)
  return x + x * (y * p)


def _opaque(x, zero):
  """x, hidden from algebraic rewriting: fast-math kernels may reassociate (180 - a) + (180 - b) into
  360 - (a + b), losing the exactness the formulas rely on; xor with a runtime zero cannot be seen through."""
  if zero is None:
    return x
  return lax.bitcast_convert_type(lax.bitcast_convert_type(x, jnp.int32) ^ zero, jnp.float32)


def haversine_terms(lat1, lon1, lat2, lon2, zero=None) -> tuple[jax.Array, jax.Array]:
  """(h, q) = (sin^2(d/2R), cos^2(d/2R)) for float32 degrees, lat in [-90, 90], lon in [-180, 180].

  zero: optional int32 runtime 0; pass it when compiling with fast math (see _opaque).
  """
  o = lambda x: _opaque(x, zero)
  half_dlat = o(jnp.abs(lat2 - lat1)) * 0.5                    # [0, 90] degrees
  abs_lon1, abs_lon2 = jnp.abs(lon1), jnp.abs(lon2)
  dlon = jnp.minimum(o(jnp.abs(lon2 - lon1)), o(180.0 - abs_lon1) + o(180.0 - abs_lon2))
  half_dlon = dlon * 0.5                                       # [0, 90] degrees
  # |lat_m| and 90 - |lat_m| without rounding lat1 + lat2 near the poles.
  abs1, abs2 = jnp.abs(lat1), jnp.abs(lat2)
  same_side = (lat1 * lat2) >= 0.0
  lat_m = jnp.where(same_side, abs1 + abs2, o(jnp.abs(abs1 - abs2))) * 0.5             # [0, 90] degrees
  colat_m = jnp.where(same_side, (o(90.0 - abs1) + o(90.0 - abs2)) * 0.5, o(90.0 - lat_m))
  s_lat = sin_poly(half_dlat * _DEG)
  c_lat = sin_poly(o(90.0 - half_dlat) * _DEG)
  s_lon = sin_poly(half_dlon * _DEG)
  c_lon = sin_poly(o(90.0 - half_dlon) * _DEG)
  s_m = sin_poly(lat_m * _DEG)
  c_m = sin_poly(colat_m * _DEG)
  s_lon2 = s_lon * s_lon
  c_lon2 = c_lon * c_lon
  h = (s_lat * s_lat) * c_lon2 + (c_m * c_m) * s_lon2
  q = (c_lat * c_lat) * c_lon2 + (s_m * s_m) * s_lon2
  return h, q


def _asin_poly(x, z):
  """asin(x) for x in [0, sin(pi/4)] (slightly beyond is harmless), z = x^2."""
  p = jnp.float32(_ASIN_COEFFS[-1])
  for c in _ASIN_COEFFS[-2::-1]:
    p = p * z + jnp.float32(c)
  return x + x * (z * p)


def terms_to_km(h: jax.Array, q: jax.Array) -> jax.Array:
  """Distance in km from (h, q) of haversine_terms; non-decreasing in the true distance up to rounding."""
  m = jnp.maximum(jnp.minimum(h, q), 0.0)   # <= 1/2 up to rounding: the accurate one of the two
  a = _asin_poly(jnp.sqrt(m), m)
  return _TWO_R * jnp.where(h <= q, a, _HALF_PI - a)


@jax.jit
def haversine_km(a_latlon: jax.Array, b_latlon: jax.Array) -> jax.Array:
  """Great-circle distance in km between [N, 2] (lat, lon) degree arrays (R = 6371 km) -> [N] float32."""
  a = jnp.asarray(a_latlon, jnp.float32)
  b = jnp.asarray(b_latlon, jnp.float32)
  h, q = haversine_terms(a[..., 0], a[..., 1], b[..., 0], b[..., 1])
  return terms_to_km(h, q)


def haversine_km_numpy(a_latlon, b_latlon) -> np.ndarray:
  """float64 numpy reference: the textbook formula 2R asin(sqrt(h)), h clipped to [0, 1]."""
  a = np.radians(np.asarray(a_latlon, np.float64))
  b = np.radians(np.asarray(b_latlon, np.float64))
  h = (np.sin((b[..., 0] - a[..., 0]) / 2) ** 2
       + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2) ** 2)
  return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
