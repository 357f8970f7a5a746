"""Gallery refinement on a hand-made gallery: the photo a hand computation of the documented rule picks."""
import numpy as np
import pytest

from translocator_jax.geo import cells
from translocator_jax.geo.distance import haversine_km_numpy
from translocator_jax.infer import refine
from translocator_jax.infer.gallery import Gallery

# Three S2 face cells (tokens 1, 3, 5: faces 0, 1, 2) serve as coarse, middle and fine partitions alike.
FACES = ["1", "3", "5"]
FACE_LATLON = np.array([[0.0, 0.0], [0.0, 90.0], [90.0, 0.0]], np.float32)


def _partitions():
  p = cells.Partition(FACES, np.array([10, 10, 10]), FACE_LATLON)
  return [p, p, p]


def _unit(deg):
  return np.array([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], np.float32)


def _gallery():
  # Face 0 (cell 0): one photo alone at (10, 5) that looks most like the query, and a tight three-photo cluster
  # 2-4 km apart near (12, 20) that looks a bit less alike. Face 1 (cell 1): a photo that looks exactly like a
  # query at 0 degrees, outside the top cell. Face 2 (cell 2): each photo's opposite, so the embeddings' mean is
  # zero and the (centred) similarities are the plain cosines.
  latlon = np.array([[10.0, 5.0], [12.0, 20.0], [12.02, 20.0], [12.0, 20.03], [5.0, 90.0]], np.float32)
  emb = np.stack([_unit(a) for a in (5.0, 20.0, 22.0, 24.0, 0.0)]).astype(np.float16)
  fine = np.array([0, 0, 0, 0, 1], np.int32)
  latlon = np.concatenate([latlon, [[70.0 + i, 10.0 * i] for i in range(5)]]).astype(np.float32)
  emb = np.concatenate([emb, -emb])
  fine = np.concatenate([fine, np.full(5, 2, np.int32)])
  ids = np.array([f"photo{i}" for i in range(len(latlon))])
  return Gallery(emb, latlon, fine, np.arange(len(latlon)), ids, {})


def _hand_pick(gallery, query, cell_probs, settings):
  """The rule of infer/refine.py's docstring, in plain numpy."""
  p = np.asarray(cell_probs, np.float64)
  top = np.argsort(-p)[:settings.top_cells]
  logp = np.full(p.shape, -np.inf)
  logp[top] = np.log(p[top] / p[top].sum())
  emb = gallery.embeddings.astype(np.float64)
  centred = emb - emb.mean(0)
  centred /= np.linalg.norm(centred, axis=1, keepdims=True)
  q = query - emb.mean(0)
  q /= np.linalg.norm(q)
  sims = centred @ q
  scores = logp[gallery.fine_cell] + sims / settings.temperature
  nb = np.argsort(-scores, kind="stable")[:settings.neighbours]
  w = np.exp(scores[nb] - scores[nb].max())
  w /= w.sum()
  d = haversine_km_numpy(gallery.latlon[nb][:, None], gallery.latlon[nb][None])
  support = (((d < settings.radius_km) * w[None]).sum(1)
             + settings.fine_weight * ((d < refine.FINE_KM) * w[None]).sum(1))
  best = nb[int(np.argmax(support))]
  return best, sims[best]


@pytest.mark.parametrize("radius_km,expected", [(25.0, 1), (0.5, 0)])
def test_refinement_picks_the_hand_computed_photo(radius_km, expected):
  gallery = _gallery()
  settings = refine.RefineSettings(top_cells=1, temperature=0.1, neighbours=4, radius_km=radius_km)
  refiner = refine.Refiner(gallery, _partitions(), settings)
  query = _unit(8.0)
  # The heads: identical probabilities on all three levels, so f* = p^3 renormalised; cell 0 on top.
  head = np.array([[0.6, 0.3, 0.1]], np.float32)
  probs = {"coarse": head, "middle": head, "fine": head}
  out = refiner.refine(probs, query[None])
  cell_probs = head[0] ** 3 / (head[0] ** 3).sum()
  want, want_sim = _hand_pick(gallery, query.astype(np.float64), cell_probs, settings)
  # With a 25 km radius the cluster's three votes beat the single most similar photo; no two of them are within
  # 1 km, so the tie between the three goes to the best score (photo 1). With 0.5 km every photo stands alone
  # and the best score wins (photo 0).
  assert want == expected
  assert int(np.asarray(out["matched_row"])[0]) == want
  np.testing.assert_allclose(np.asarray(out["refined"])[0], gallery.latlon[want], atol=1e-5)
  np.testing.assert_allclose(float(np.asarray(out["matched_similarity"])[0]), want_sim, atol=2e-3)


@pytest.mark.parametrize("fine_weight,expected", [(0.5, 0), (2.0, 3)])
def test_fine_weight_trades_the_heaviest_region_for_the_heaviest_1_km_cluster(fine_weight, expected):
  # Five equally similar photos in cell 0 (equal weights w = 1/5): a region of three photos 5-10 km apart (none
  # within 1 km of another) and, 100+ km away, a pair 0.3 km apart. Support of a region photo: 3w + fine_weight w;
  # of a pair photo: 2w + fine_weight 2w. The region wins below fine_weight 1, the pair above.
  latlon = np.array([[10.0, 5.0], [10.05, 5.0], [10.0, 5.09], [11.0, 5.0], [11.0027, 5.0]], np.float32)
  latlon = np.concatenate([latlon, [[70.0 + i, 10.0 * i] for i in range(5)]]).astype(np.float32)
  emb = np.stack([_unit(10.0)] * 5).astype(np.float16)
  emb = np.concatenate([emb, -emb])
  fine = np.array([0] * 5 + [2] * 5, np.int32)
  gallery = Gallery(emb, latlon, fine, np.arange(10), np.array([f"p{i}" for i in range(10)]), {})
  settings = refine.RefineSettings(top_cells=1, temperature=0.1, neighbours=5, radius_km=25.0,
                                   fine_weight=fine_weight)
  head = np.array([[0.6, 0.3, 0.1]], np.float32)
  out = refine.Refiner(gallery, _partitions(), settings).refine({"coarse": head, "middle": head, "fine": head},
                                                                _unit(8.0)[None])
  want, _ = _hand_pick(gallery, _unit(8.0).astype(np.float64), head[0] ** 3 / (head[0] ** 3).sum(), settings)
  assert want == expected
  assert int(np.asarray(out["matched_row"])[0]) == want
  if expected == 3:  # the answer is the pair's centre
    np.testing.assert_allclose(np.asarray(out["refined"])[0], latlon[3:5].mean(0), atol=1e-4)


def test_top_cells_widen_the_search_and_settings_are_checked():
  gallery = _gallery()
  refiner = refine.Refiner(gallery, _partitions(),
                           refine.RefineSettings(top_cells=2, temperature=0.001, neighbours=1, radius_km=25.0))
  head = np.array([[0.6, 0.3, 0.1]], np.float32)
  out = refiner.refine({"coarse": head, "middle": head, "fine": head}, _unit(0.0)[None])
  # score = log p(cell) + similarity / 0.001: the exact look-alike in the second cell (log 0.111 + 1000) beats
  # photo 0 of the first (log 0.889 + 996.2).
  assert int(np.asarray(out["matched_row"])[0]) == 4
  only_top = refine.RefineSettings(top_cells=1, temperature=0.001, neighbours=1, radius_km=25.0)
  out = refiner.refine({"coarse": head, "middle": head, "fine": head}, _unit(0.0)[None], only_top)
  assert int(np.asarray(out["matched_row"])[0]) == 0
  with pytest.raises(ValueError, match="unknown setting"):
    refine.RefineSettings.from_mapping({"top_cell": 3})
  with pytest.raises(ValueError, match="projection"):
    refine.Refiner(gallery, _partitions(), refine.RefineSettings(features="projected"))


def test_the_answer_is_the_weighted_centre_of_the_matched_photos_1_km_cluster():
  # Three photos in cell 0: two 0.56 km apart (within 1 km), one 200 km away; the pair outvotes the single one.
  latlon = np.array([[10.0, 5.0], [10.005, 5.0], [12.0, 5.0], [80.0, 0.0], [81.0, 0.0], [82.0, 0.0]], np.float32)
  emb = np.stack([_unit(a) for a in (10.0, 14.0, 6.0)]).astype(np.float16)
  emb = np.concatenate([emb, -emb])                       # mean zero: centred similarities are the cosines
  fine = np.array([0, 0, 0, 2, 2, 2], np.int32)
  gallery = Gallery(emb, latlon, fine, np.arange(6), np.array([f"p{i}" for i in range(6)]), {})
  settings = refine.RefineSettings(top_cells=1, temperature=0.1, neighbours=3, radius_km=25.0)
  head = np.array([[0.6, 0.3, 0.1]], np.float32)
  out = refine.Refiner(gallery, _partitions(), settings).refine({"coarse": head, "middle": head, "fine": head},
                                                                _unit(8.0)[None])
  sims = np.array([np.cos(np.deg2rad(a)) for a in (2.0, 6.0, 2.0)])  # query at 8 degrees
  w = np.exp(sims / 0.1 - (sims / 0.1).max())
  w /= w.sum()
  # Support (25 km): photos 0 and 1 have w0 + w1 (+ half that within 1 km); photo 2 alone has w2 (+ w2 / 2).
  assert int(np.asarray(out["matched_row"])[0]) == 0
  want = (w[0] * latlon[0] + w[1] * latlon[1]) / (w[0] + w[1])   # at this scale the spherical mean is this
  np.testing.assert_allclose(np.asarray(out["refined"])[0], want, atol=1e-4)
