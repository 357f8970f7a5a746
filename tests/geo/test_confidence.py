"""Confidence radii: each cell's measured spread, the mixture's quantiles against a numpy reference, and the
per-radius temperatures that make a miscalibrated model's radii cover what they say."""
import numpy as np
import jax.numpy as jnp
import pytest

from translocator_jax.geo import cells, confidence, distance


def test_partition_spread_is_the_rms_distance_of_its_members_and_survives_the_csv(tmp_path):
  rng = np.random.default_rng(0)
  latlon = np.concatenate([rng.normal([48.8, 2.3], 0.3, (300, 2)), rng.normal([40.7, -74.0], 0.05, (200, 2)),
                           rng.uniform([-60, -180], [70, 180], (400, 2))])
  part = cells.build_partition(latlon, tau_min=5, tau_max=120)
  classes = part.assign(latlon)
  for c in range(part.num_classes):
    members = latlon[classes == c]
    rms = np.sqrt(np.mean(distance.haversine_km_numpy(members, members.mean(0)[None]) ** 2))
    assert part.spread_km[c] == pytest.approx(rms, rel=1e-6, abs=1e-6)
  cells.write_partition_csv(part, tmp_path / "p.csv")
  back = cells.load_partition_csv(tmp_path / "p.csv")
  np.testing.assert_allclose(back.spread_km, part.spread_km, atol=1e-4)
  # A published-layout file (no spread column) loads; its spread falls back to the S2 cell's extent, which
  # shrinks by half per level.
  lines = (tmp_path / "p.csv").read_text().splitlines()
  plain = lines[:2] + [lines[2].rsplit(",", 1)[0]] + [l.rsplit(",", 1)[0] for l in lines[3:]]
  (tmp_path / "plain.csv").write_text("\n".join(plain) + "\n")
  old = cells.load_partition_csv(tmp_path / "plain.csv")
  assert old.spread_km is None and old.hex_ids == part.hex_ids
  extent = old.cell_spread_km()
  for c in range(old.num_classes):
    assert extent[c] == pytest.approx(np.sqrt(4 * np.pi * 6371.0088 ** 2 / (6 * 4.0 ** old.levels[c]) / 6))


def _reference_radii(probs, centre, points, temperature, q):
  """Weighted quantile of the distances to every draw, in float64 numpy."""
  w = np.maximum(probs, 1e-30) ** (1 / temperature)
  w = np.repeat(w / w.sum(), points.shape[1]) / points.shape[1]
  d = distance.haversine_km_numpy(np.broadcast_to(centre, (points.size // 2, 2)), points.reshape(-1, 2))
  order = np.argsort(d)
  mass = np.cumsum(w[order])
  return d[order][np.searchsorted(mass, q * mass[-1] * (1 - 1e-6))]


def test_radii_equal_a_numpy_weighted_quantile():
  rng = np.random.default_rng(1)
  cell_latlon = rng.uniform([-60, -180], [70, 180], (40, 2))
  spread = rng.uniform(5, 400, 40)
  points = confidence.cell_points(cell_latlon, spread)
  probs = rng.dirichlet(np.full(40, 0.3), 6).astype(np.float32)
  centre = cell_latlon[np.argmax(probs, 1)].astype(np.float32)
  got = np.asarray(confidence.radii_km(jnp.asarray(probs), jnp.asarray(centre), jnp.asarray(points), (0.8, 1.7)))
  for b in range(6):
    for i, (t, q) in enumerate(((0.8, 0.5), (1.7, 0.9))):
      assert got[b, i] == pytest.approx(_reference_radii(probs[b], centre[b], points, t, q), rel=2e-3, abs=0.05)


def _numpy_weighted_quantile(values, weights, q):
  order = np.argsort(values, kind="stable")
  mass = np.cumsum(np.asarray(weights, np.float64)[order])
  return values[order][np.searchsorted(mass, q * mass[-1])]


def test_weighted_quantile_picks_the_value_a_sorted_cumulative_sum_picks():
  rng = np.random.default_rng(3)
  b, n = 5, 50_001  # not a multiple of the summation groups
  values = rng.gamma(1.0, 3000.0, (b, n)).astype(np.float32)
  values[:, :2000] = np.round(values[:, :2000])                 # ties
  values[0, :10] = 0.0                                          # zero distances
  values[1] = rng.uniform(0, 1e-3, n).astype(np.float32)        # tiny values (small exponents)
  weights = rng.integers(0, 6, (b, n)).astype(np.float32)       # whole numbers: every float32 sum is exact,
  weights[2, : n // 2] = 0.0                                    # so the pick must be exactly the reference's
  weights[3] = 0.0
  weights[3, 777] = 4.0                                         # all the mass on one value
  for q in (0.1, 0.5, 0.9, 1.0):
    got = np.asarray(confidence.weighted_quantile(jnp.asarray(values), jnp.asarray(weights), q))
    want = [_numpy_weighted_quantile(values[i], weights[i], q) for i in range(b)]
    np.testing.assert_array_equal(got, want, err_msg=f"q={q}")
  assert np.asarray(confidence.weighted_quantile(jnp.asarray(values), jnp.asarray(weights), 0.5))[3] == values[3, 777]
  # Real-valued weights: the crossing may move only where float32 sums cannot tell, i.e. to a neighbouring value
  # whose mass below differs from q by float32 rounding.
  soft = rng.dirichlet(np.full(n, 0.2), b).astype(np.float32)
  got = np.asarray(confidence.weighted_quantile(jnp.asarray(values), jnp.asarray(soft), 0.9))
  for i in range(b):
    below = soft[i][values[i] < got[i]].astype(np.float64).sum()
    upto = soft[i][values[i] <= got[i]].astype(np.float64).sum()
    assert below <= 0.9 + 1e-5 and upto >= 0.9 - 1e-5 and got[i] in values[i]


def test_one_cell_gives_the_gaussian_quantiles_and_a_far_cell_the_tail():
  points = confidence.cell_points([[10.0, 20.0], [10.0, 30.0]], [50.0, 1.0])
  # All the mass in one cell: the radii are its Gaussian's (RMS radius 50 km): 50 sqrt(ln 2), 50 sqrt(ln 10).
  r = np.asarray(confidence.radii_km(jnp.asarray([[1.0, 0.0]]), jnp.asarray([[10.0, 20.0]]), jnp.asarray(points)))
  assert r[0, 0] == pytest.approx(50 * np.sqrt(np.log(2)), rel=0.1)
  assert r[0, 1] == pytest.approx(50 * np.sqrt(np.log(10)), rel=0.1)
  # 70% here, 30% in a tight cell ~1,095 km east: radius50 stays local, radius90 reaches the far cell.
  r = np.asarray(confidence.radii_km(jnp.asarray([[0.7, 0.3]]), jnp.asarray([[10.0, 20.0]]), jnp.asarray(points)))
  far = distance.haversine_km_numpy(np.array([10.0, 20.0]), np.array([10.0, 30.0]))
  assert r[0, 0] < 100 and r[0, 1] == pytest.approx(far, abs=5)


def test_fitted_temperatures_make_an_overconfident_model_cover_what_it_says():
  rng = np.random.default_rng(2)
  c = 60
  cell_latlon = rng.uniform([-50, -170], [60, 170], (c, 2))
  spread = rng.uniform(20, 200, c)
  points = confidence.cell_points(cell_latlon, spread)

  def draw(n):
    """Photos whose truth follows softmax(logits) while the model reports softmax(2.5 logits)."""
    logits = rng.normal(0, 1.5, (n, c))
    honest = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cell = np.array([rng.choice(c, p=p) for p in honest])
    off = rng.normal(0, 1, (n, 2)) * (spread[cell] / np.sqrt(2))[:, None] / 111.195
    true = cell_latlon[cell] + off / np.stack([np.ones(n), np.cos(np.radians(cell_latlon[cell, 0]))], 1)
    model = np.exp(2.5 * logits) / np.exp(2.5 * logits).sum(1, keepdims=True)
    return model.astype(np.float32), cell_latlon[np.argmax(model, 1)].astype(np.float32), true.astype(np.float32)

  val, test = draw(1500), draw(1500)
  raw = np.asarray(confidence.radii_km(jnp.asarray(test[0]), jnp.asarray(test[1]), jnp.asarray(points)))
  err = distance.haversine_km_numpy(test[1], test[2])
  assert (err <= raw[:, 0]).mean() < 0.4  # overconfident: the plain radii are too small
  temps, rows = confidence.fit_temperatures(*val, points)
  assert len(rows) == len(confidence.TEMPERATURES) and all(t > 1.5 for t in temps)
  fitted = np.asarray(confidence.radii_km(jnp.asarray(test[0]), jnp.asarray(test[1]), jnp.asarray(points), temps))
  assert (err <= fitted[:, 0]).mean() == pytest.approx(0.5, abs=0.05)
  assert (err <= fitted[:, 1]).mean() == pytest.approx(0.9, abs=0.05)
