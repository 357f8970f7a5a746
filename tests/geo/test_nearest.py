"""geo.nearest: the nearest reference location, against a float64 numpy brute force."""
import numpy as np

from translocator_jax.geo import nearest
from translocator_jax.geo.distance import haversine_km_numpy


def _brute(q, r):
  d = haversine_km_numpy(q[:, None, :], r[None, :, :])
  return d.min(1), d.argmin(1)


def test_nearest_equals_numpy_world_and_street_scale():
  rng = np.random.default_rng(0)
  world = np.stack([rng.uniform(-89, 89, 3000), rng.uniform(-180, 180, 3000)], -1)
  # A city: points metres to kilometres apart, where a dot product in float32 could not tell them apart.
  city = np.array([48.8566, 2.3522]) + rng.normal(scale=0.01, size=(500, 2))
  refs = np.concatenate([world, city]).astype(np.float32)
  queries = np.concatenate([
      np.stack([rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)], -1),
      np.array([48.8566, 2.3522]) + rng.normal(scale=0.01, size=(200, 2)),
      [[90.0, 0.0], [-90.0, 0.0], [0.0, 180.0], [0.0, -180.0]],     # poles and the antimeridian
  ]).astype(np.float32)
  km, idx = nearest.nearest_km(queries, refs, ref_chunk=512, query_chunk=128)  # several chunks, padded
  want_km, want_idx = _brute(queries.astype(np.float64), refs.astype(np.float64))
  np.testing.assert_allclose(km, want_km, rtol=1e-4, atol=2e-3)   # 2 m
  # Where the two nearest are not tied to a metre, the same row.
  d = np.sort(haversine_km_numpy(queries[:, None, :].astype(np.float64), refs[None].astype(np.float64)), 1)
  clear = d[:, 1] - d[:, 0] > 1e-3
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(idx[clear], want_idx[clear])


def test_exact_hits_and_edge_sizes():
  refs = np.array([[10.0, 20.0], [-33.9, 151.2], [51.5, -0.13]], np.float32)
  km, idx = nearest.nearest_km(refs[::-1], refs)
  np.testing.assert_allclose(km, 0.0, atol=1e-3)
  np.testing.assert_array_equal(idx, [2, 1, 0])
  km, idx = nearest.nearest_km(np.zeros((0, 2), np.float32), refs)
  assert km.shape == (0,) and idx.shape == (0,)
