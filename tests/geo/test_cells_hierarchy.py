"""S2 partitions: shipped files, vectorised cell ids, build_partition nesting, hierarchy and f*."""
import numpy as np
import pytest
import s2sphere

from translocator_jax.geo import Hierarchy, build_partition, fstar_topk, load_partition_csv, write_partition_csv
from translocator_jax.geo import cells

COUNTS = {5000: 3298, 2000: 7202, 1000: 12893}


@pytest.fixture(scope="module")
def shipped(shared_data):
  return {t: load_partition_csv(shared_data / "partitions" / f"cells_50_{t}.csv") for t in COUNTS}


def test_shipped_partitions_load(shipped, shared_data):
  for t, n in COUNTS.items():
    p = shipped[t]
    assert p.num_classes == n and p.num_images == 4723695
    lines = (shared_data / "partitions" / f"cells_50_{t}.csv").read_text().splitlines()
    label, token, count, lat, lon = lines[3 + n // 2].split(",")
    assert p.hex_ids[int(label)] == token and p.counts[int(label)] == int(count)
    np.testing.assert_allclose(p.latlon_mean[int(label)], [float(lat), float(lon)], rtol=1e-6)
    assert (p.counts > 50).all()
    # Cells are disjoint: each cell's own leaf ids assign back to it.
    some = np.arange(0, n, 97)
    leaf = p.cell_ids[some] - (p.cell_ids[some] & (~p.cell_ids[some] + np.uint64(1))) + np.uint64(1)
    np.testing.assert_array_equal(p.assign_ids(leaf), some)


def test_partition_csv_roundtrip(shipped, tmp_path):
  p = shipped[5000]
  write_partition_csv(p, tmp_path / "p.csv")
  q = load_partition_csv(tmp_path / "p.csv")
  assert q.hex_ids == p.hex_ids and (q.counts == p.counts).all() and q.num_images == p.num_images
  np.testing.assert_array_equal(q.latlon_mean, p.latlon_mean)


def test_leaf_ids_match_s2sphere():
  rng = np.random.default_rng(0)
  z = rng.uniform(-1, 1, 3000)
  latlon = np.stack([np.degrees(np.arcsin(z)), rng.uniform(-180, 180, 3000)], 1)
  latlon[:6] = [[90, 0], [-90, 0], [0, 180], [0, -180], [0, 0], [45, 45]]
  ref = [s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)) for a, b in latlon]
  ids = cells.leaf_cell_ids(latlon)
  np.testing.assert_array_equal(ids, np.array([c.id() for c in ref], np.uint64))
  for level in (2, 9, 17):
    np.testing.assert_array_equal(cells.parent_ids(ids[:300], level),
                                  np.array([c.parent(level).id() for c in ref[:300]], np.uint64))
    assert (cells.cell_levels(cells.parent_ids(ids[:300], level)) == level).all()


def test_build_partition_follows_the_algorithm(shipped):
  rng = np.random.default_rng(1)
  src = shipped[2000]
  # Coordinates sampled around the shipped cells' means, weighted by their counts.
  n = 60_000
  cls = rng.choice(src.num_classes, n, p=src.counts / src.counts.sum())
  latlon = src.latlon_mean[cls] + rng.normal(0, 0.3, (n, 2))
  latlon[:, 0] = np.clip(latlon[:, 0], -90, 90)
  latlon[:, 1] = (latlon[:, 1] + 180) % 360 - 180
  tau_min, tau_max = 20, 400
  p = build_partition(latlon, tau_min, tau_max)
  assert p.num_classes > 10
  assert (p.counts > tau_min).all()
  assert ((p.counts <= tau_max) | (p.levels == 30)).all()
  # Counts and means are those of the assigned members.
  assign = p.assign(latlon)
  np.testing.assert_array_equal(np.bincount(assign[assign >= 0], minlength=p.num_classes), p.counts)
  c = 3
  np.testing.assert_allclose(p.latlon_mean[c], latlon[assign == c].mean(0), rtol=1e-5, atol=1e-4)
  # Unassigned points lie in a region whose cell (at some level) was dropped for having <= tau_min images.
  leaf = cells.leaf_cell_ids(latlon)
  for i in np.nonzero(assign < 0)[0][:50]:
    sizes = [np.sum(cells.parent_ids(leaf, lv) == cells.parent_ids(leaf[i], lv)) for lv in range(2, 31)]
    assert min(sizes) <= tau_min
  # Every cell's parent (if above min_level) held more than tau_max images: that is why it was split.
  for c in range(0, p.num_classes, max(1, p.num_classes // 20)):
    if p.levels[c] > 2:
      parent = cells.parent_ids(p.cell_ids[c], p.levels[c] - 1)
      assert np.sum(cells.parent_ids(leaf, p.levels[c] - 1) == parent) > tau_max
  # A coarser build nests: each fine cell has an ancestor-or-self among the coarse cells.
  coarse = build_partition(latlon, tau_min, 4 * tau_max)
  assert (coarse.assign_ids(p.cell_ids) >= 0).all()


def test_shipped_hierarchy_has_true_ancestors(shipped):
  h = Hierarchy.from_partitions([shipped[5000], shipped[2000], shipped[1000]])
  assert h.exact_middle.all() and h.exact_coarse.all()
  fine, middle = shipped[1000], shipped[2000]
  for c in range(0, fine.num_classes, 1000):
    m = middle.cell_ids[h.fine_to_middle[c]]
    level = cells.cell_levels(m)
    assert level <= fine.levels[c] and cells.parent_ids(fine.cell_ids[c], level) == m


def test_hierarchy_fallback_uses_nearest_mean():
  coarse = cells.Partition(["89", "8b"], [100, 100], [[40.0, -100.0], [45.0, -80.0]])  # two face-4 cells
  fine_leaf = cells.leaf_cell_ids([[-30.0, 20.0]])[0]   # far from both coarse cells
  fine_token = cells.id_to_token(cells.parent_ids(fine_leaf, 5))
  fine = cells.Partition([fine_token], [60], [[44.0, -82.0]])
  h = Hierarchy.from_partitions([coarse, coarse, fine])
  assert not h.exact_coarse[0] and h.fine_to_coarse[0] == 1


def test_fstar_matches_hand_computation():
  # 4 fine cells; middle parents [0, 0, 1, 1]; coarse grandparents [0, 0, 0, 1].
  h = Hierarchy(np.array([0, 0, 1, 1], np.int32), np.array([0, 0, 0, 1], np.int32),
                np.array([[0, 0], [1, 1], [2, 2], [3, 3]], np.float32), np.ones(4, bool), np.ones(4, bool))
  p_fine = np.array([[0.4, 0.1, 0.3, 0.2]], np.float32)
  p_middle = np.array([[0.3, 0.7]], np.float32)
  p_coarse = np.array([[0.6, 0.4]], np.float32)
  # Scores: 0.4*.3*.6=.072, .1*.3*.6=.018, .3*.7*.6=.126, .2*.7*.4=.056 -> order 2, 0, 3, 1.
  classes, scores, latlon = fstar_topk(h, p_coarse, p_middle, p_fine, k=3)
  np.testing.assert_array_equal(np.asarray(classes), [[2, 0, 3]])
  np.testing.assert_allclose(np.asarray(scores), [[0.126, 0.072, 0.056]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(latlon), [[[2, 2], [0, 0], [3, 3]]])


def test_shipped_csv_rewrites_identically(shared_data, tmp_path):
  src = shared_data / "partitions" / "cells_50_1000.csv"
  write_partition_csv(load_partition_csv(src), tmp_path / "c.csv")
  assert (tmp_path / "c.csv").read_text() == src.read_text()
