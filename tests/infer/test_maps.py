"""Maps are drawn offline over the Blue Marble, with the markers where the coordinates say."""
import numpy as np
import pytest
from PIL import Image

from translocator_jax.infer import maps


def test_blue_marble_is_the_packaged_equirectangular_image():
  image = maps.blue_marble()
  assert image.shape == (2700 // 4, 5400 // 4, 3)
  # Equirectangular: the Sahara (lat 23, lon 10) is sandy, the mid-Pacific (lat 0, lon -150) is dark blue.
  def pixel(lat, lon):
    return image[int((90 - lat) / 180 * image.shape[0]), int((lon + 180) / 360 * image.shape[1])].astype(int)
  sahara, pacific = pixel(23, 10), pixel(0, -150)
  assert sahara[0] > sahara[2] + 40
  assert pacific[2] > pacific[0] + 20


def test_prediction_figure_shows_the_photo_and_zooms_to_the_probability(tmp_path):
  rng = np.random.default_rng(0)
  cells = np.concatenate([[[48.85, 2.35], [48.9, 2.4], [45.76, 4.83], [50.85, 4.35], [51.5, -0.12]],
                          rng.uniform([-50, -120], [60, 140], (100, 2))])
  prob = np.concatenate([[0.3, 0.25, 0.1, 0.08, 0.07], rng.dirichlet(np.ones(100)) * 0.2])
  photo = np.zeros((64, 64, 3), np.uint8)
  photo[..., 0] = photo[..., 2] = 255  # magenta: nowhere on the Blue Marble
  path = maps.draw_prediction_figure(
      tmp_path / "f.png", candidates_latlon=cells[:5], candidates_prob=prob[:5],
      labels=["Paris, France", "Saint-Denis, France", "Lyon, France", "Brussels, Belgium", "London, UK"],
      photo=photo, cell_latlon=cells, cell_prob=prob, cell_spread_km=np.full(105, 30.0), radius50_km=120,
      radius90_km=900, true_latlon=[48.1, 1.7], refined_latlon=[48.86, 2.34], title="t")
  drawn = np.asarray(Image.open(path).convert("RGB")).astype(int)
  magenta = (drawn[..., 0] > 240) & (drawn[..., 1] < 20) & (drawn[..., 2] > 240)
  ys, xs = np.nonzero(magenta)
  assert magenta.sum() > 50_000 and xs.max() < drawn.shape[1] * 0.36  # the photo, on the left
  # Zoomed to Western Europe (the 90% circle, 900 km), not to the far-flung tail of the probability.
  lon0, lon1, lat0, lat1 = maps._extent(np.concatenate([cells[:2], cells[:1]]), 900.0, cells[0])
  assert -25 < lon0 < 0 < 5 < lon1 < 30 and 35 < lat0 < 48 < 50 < lat1 < 62


def test_labels_of_a_crowded_cluster_do_not_overlap():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
  ax.set_xlim(0, 10)
  ax.set_ylim(0, 10)
  points = [(5.0, 5.0), (5.05, 5.0), (5.0, 5.05), (5.1, 5.1), (4.95, 4.9)]
  fig.canvas.draw()
  boxes = maps._place_labels(fig, ax, points, [f"{i + 1}. a long place name, country 12%" for i in range(5)])
  plt.close(fig)
  assert len(boxes) == 5
  for i in range(5):
    for j in range(i + 1, 5):
      assert not maps._overlap(boxes[i], boxes[j]), (i, j)


def test_error_map_and_accuracy_curve(tmp_path):
  rng = np.random.default_rng(0)
  true = rng.uniform([-60, -180], [60, 180], (50, 2)).astype(np.float32)
  maps.draw_errors(tmp_path / "e.png", true + 1.0, true)
  assert Image.open(tmp_path / "e.png").size == (1200, 620)
  maps.plot_accuracy_curve(tmp_path / "c.png", {"model": rng.uniform(0, 5000, 100)})
  assert (tmp_path / "c.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="2 true locations"):
    maps.draw_errors(tmp_path / "x.png", true[:3], true[:2])
