"""haversine exactness and accuracy_table against a float64 numpy reference."""
import numpy as np
import pytest

from translocator_jax.geo import accuracy_table, haversine_km
from translocator_jax.geo.distance import EARTH_RADIUS_KM, haversine_km_numpy
from translocator_jax.geo.metrics import THRESHOLDS_KM, accuracy_table_numpy, threshold_key


def _random_pairs(rng, n, spread_deg):
  z = rng.uniform(-1, 1, n)
  a = np.stack([np.degrees(np.arcsin(z)), rng.uniform(-180, 180, n)], 1)
  b = a + rng.normal(0, spread_deg, (n, 2))
  b[:, 0] = np.clip(b[:, 0], -90, 90)
  b[:, 1] = (b[:, 1] + 180) % 360 - 180
  return a.astype(np.float32), b.astype(np.float32)


def test_identical_points_are_zero():
  rng = np.random.default_rng(0)
  a, _ = _random_pairs(rng, 1000, 1)
  a[:4] = [[90, 0], [-90, 180], [0, -180], [12.5, 179.999]]
  np.testing.assert_array_equal(np.asarray(haversine_km(a, a)), 0.0)


def test_antipodal_points_are_pi_r():
  rng = np.random.default_rng(1)
  a, _ = _random_pairs(rng, 1000, 1)
  a[:3] = [[90, 0], [0, -180], [-45, 90]]
  b = np.stack([-a[:, 0], np.where(a[:, 1] > 0, a[:, 1] - 180, a[:, 1] + 180)], 1).astype(np.float32)
  d = np.asarray(haversine_km(a, b))
  assert not np.isnan(d).any()
  np.testing.assert_allclose(d, np.pi * EARTH_RADIUS_KM, rtol=2e-7)


@pytest.mark.parametrize("spread", [1e-4, 1e-2, 1.0, 60.0])
def test_haversine_matches_float64(spread):
  rng = np.random.default_rng(2)
  a, b = _random_pairs(rng, 50_000, spread)
  d = np.asarray(haversine_km(a, b))
  ref = haversine_km_numpy(a, b)
  np.testing.assert_allclose(d, ref, rtol=2e-6, atol=1e-9)


def _assert_table_matches(a, b, mask=None):
  got = accuracy_table(a, b, mask=mask)
  ref = accuracy_table_numpy(a, b, mask=mask)
  assert got["n"] == ref["n"]
  # Accuracies exact except pairs tied with a threshold within float32 rounding.
  d64 = haversine_km_numpy(a, b)
  if mask is not None:
    d64 = d64[np.asarray(mask)]
  for t in THRESHOLDS_KM:
    ties = np.sum(np.abs(d64 - t) <= 1e-5 * t)
    assert abs(got[threshold_key(t)] - ref[threshold_key(t)]) * ref["n"] <= ties + 1e-9, t
  assert got["median_km"] == pytest.approx(ref["median_km"], rel=2e-6, abs=1e-6)
  assert got["mean_km"] == pytest.approx(ref["mean_km"], rel=1e-5)
  assert got["geoscore"] == pytest.approx(ref["geoscore"], rel=1e-5)


@pytest.mark.parametrize("n,spread", [(1, 3.0), (2, 3.0), (101, 0.1), (40_000, 40.0)])
def test_accuracy_table_random(n, spread):
  a, b = _random_pairs(np.random.default_rng(n), n, spread)
  _assert_table_matches(a, b)


def test_accuracy_table_mask():
  rng = np.random.default_rng(5)
  a, b = _random_pairs(rng, 40_000, 2.0)
  mask = rng.random(len(a)) < 0.6
  _assert_table_matches(a, b, mask)
  # Masked-out pairs do not count, whatever they hold.
  a2 = a.copy()
  a2[~mask] = [[90, 0]]
  assert accuracy_table(a2, b, mask=mask) == accuracy_table(a, b, mask=mask)
  empty = accuracy_table(a, b, mask=np.zeros(len(a), bool))
  assert empty["n"] == 0 and np.isnan(empty["median_km"])


def test_accuracy_table_edges_and_adversarial_order():
  rng = np.random.default_rng(6)
  a, b = _random_pairs(rng, 40_000, 5.0)
  # Identical pairs, antipodal pairs, pairs exactly on thresholds (float64-decided), and sorted order,
  # which makes the strided sample unrepresentative of the middle ranks.
  a[:500] = b[:500]
  a[500:600] = np.stack([-b[500:600, 0], np.where(b[500:600, 1] > 0, b[500:600, 1] - 180,
                                                   b[500:600, 1] + 180)], 1)
  d = haversine_km_numpy(a, b)
  order = np.argsort(d)
  _assert_table_matches(a[order], b[order])
  _assert_table_matches(a[order[::-1]], b[order[::-1]])
  # All distances equal (many ties): median is that distance.
  same_a = np.repeat(a[700:701], 5000, 0)
  same_b = np.repeat(b[700:701], 5000, 0)
  got = accuracy_table(same_a, same_b)
  assert got["median_km"] == pytest.approx(float(haversine_km(a[700:701], b[700:701])[0]), rel=0)
  assert accuracy_table(a[:500], b[:500])["median_km"] == 0.0


def test_accuracy_table_threshold_equality_counts_as_within():
  # Points on the equator 1 degree apart: d = 111.19... km; threshold set to exactly that float64 value.
  a = np.array([[0.0, 0.0]], np.float32)
  b = np.array([[0.0, 1.0]], np.float32)
  t = float(haversine_km_numpy(a, b)[0])
  got = accuracy_table(a, b, thresholds_km=(t * (1 - 1e-5), t * (1 + 1e-5)))
  assert got[threshold_key(t * (1 - 1e-5))] == 0.0
  assert got[threshold_key(t * (1 + 1e-5))] == 1.0


def test_median_exact_when_the_sample_misses():
  # Every 16th pair (what the strided sample sees) is identical, the rest far apart: the sample's window
  # misses the true middle ranks and the refinement passes must still find the exact median.
  rng = np.random.default_rng(7)
  a, b = _random_pairs(rng, 40_000, 20.0)
  a[::16] = b[::16]
  _assert_table_matches(a, b)
  _assert_table_matches(a[:39_999], b[:39_999])


def test_masked_rows_may_hold_nan():
  rng = np.random.default_rng(8)
  a, b = _random_pairs(rng, 40_000, 2.0)
  mask = rng.random(len(a)) < 0.5
  a2 = a.copy()
  a2[~mask] = np.nan
  assert accuracy_table(a2, b, mask=mask) == accuracy_table(a, b, mask=mask)


def test_thresholds_in_any_order():
  a, b = _random_pairs(np.random.default_rng(9), 1000, 5.0)
  got = accuracy_table(a, b, thresholds_km=(2500, 1, 200, 25.5))
  ref = accuracy_table_numpy(a, b, thresholds_km=(2500, 1, 200, 25.5))
  assert [got[threshold_key(t)] for t in (2500, 1, 200, 25.5)] == [ref[threshold_key(t)] for t in (2500, 1, 200, 25.5)]


def test_median_exact_on_the_bracket_path():
  # Above metrics._SMALL values the median comes from a sample bracket plus a partition inside it (random,
  # sorted and reversed layouts); a periodic layout (every 61st pair identical: all the strided sample
  # sees) makes the sample miss, and the fallback selects over everything. Masked: ranks of valid only.
  rng = np.random.default_rng(10)
  a, b = _random_pairs(rng, 150_001, 8.0)
  _assert_table_matches(a, b)
  _assert_table_matches(a[:150_000], b[:150_000])
  order = np.argsort(haversine_km_numpy(a, b))
  _assert_table_matches(a[order], b[order])
  _assert_table_matches(a[order[::-1]], b[order[::-1]])
  a2 = a.copy()
  a2[::61] = b[::61]
  _assert_table_matches(a2, b)
  mask = rng.random(len(a)) < 0.3
  _assert_table_matches(a, b, mask)


def test_input_layouts_agree_across_pieces():
  # More pairs than one kernel piece (2^20): jax arrays are sliced in the kernel, aligned float32 numpy
  # arrays are aliased, unaligned / float64 ones copied piece by piece; all must give the same table.
  import jax
  from translocator_jax.geo import metrics
  n = metrics._PIECE + 12_345
  rng = np.random.default_rng(11)
  a, b = _random_pairs(rng, n + 1, 3.0)
  mask = rng.random(n) < 0.7
  aligned_a, aligned_b = metrics._aligned(a[1:], np.float32), metrics._aligned(b[1:], np.float32)
  base_a, base_b = metrics._aligned(a, np.float32), metrics._aligned(b, np.float32)
  unaligned_a, unaligned_b = base_a[1:], base_b[1:]  # 8 bytes past a 64-byte boundary
  assert isinstance(metrics._kernel_input(aligned_a, np.float32), jax.Array)  # aliased
  assert isinstance(metrics._kernel_input(unaligned_a, np.float32), dict)  # aliased past 7 rows
  assert isinstance(metrics._kernel_input(unaligned_a.astype(np.float64), np.float32), list)  # copied
  want = accuracy_table(jax.device_put(aligned_a), jax.device_put(aligned_b), mask=mask)
  assert accuracy_table(aligned_a, aligned_b, mask=mask) == want
  assert accuracy_table(unaligned_a, unaligned_b, mask=mask) == want
  assert accuracy_table(unaligned_a.astype(np.float64), unaligned_b, mask=mask.astype(np.int8)) == want
  _assert_table_matches(unaligned_a, unaligned_b, mask)
