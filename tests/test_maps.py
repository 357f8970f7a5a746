"""Maps are drawn offline over the Blue Marble, with the markers where the coordinates say."""
import numpy as np
import pytest
from PIL import Image

from translocator_jax.eval import maps


def test_blue_marble_is_the_packaged_equirectangular_image():
  image = maps.blue_marble()
  assert image.shape == (2700 // 4, 5400 // 4, 3)
  # Equirectangular: the Sahara (lat 23, lon 10) is sandy, the mid-Pacific (lat 0, lon -150) is dark blue.
  def pixel(lat, lon):
    return image[int((90 - lat) / 180 * image.shape[0]), int((lon + 180) / 360 * image.shape[1])].astype(int)
  sahara, pacific = pixel(23, 10), pixel(0, -150)
  assert sahara[0] > sahara[2] + 40
  assert pacific[2] > pacific[0] + 20


def test_prediction_map_marks_the_prediction(tmp_path):
  path = maps.draw_predictions(tmp_path / "m.png", [[0.0, -150.0]], [1.0], true_latlon=[45.0, 100.0],
                               title="test")
  drawn = np.asarray(Image.open(path).convert("RGB")).astype(int)
  gold = (drawn[..., 0] > 200) & (drawn[..., 1] > 170) & (drawn[..., 2] < 80)
  assert gold.sum() > 500  # the large marker of a 100% prediction (the legend's marker is small)
  ys, xs = np.nonzero(gold)
  # Most gold pixels sit in the left sixth of the figure (lon -150) and near its vertical middle (lat 0).
  assert np.median(xs) < drawn.shape[1] * 0.2
  assert abs(np.median(ys) - drawn.shape[0] / 2) < drawn.shape[0] * 0.1


def test_error_map_and_accuracy_curve(tmp_path):
  rng = np.random.default_rng(0)
  true = rng.uniform([-60, -180], [60, 180], (50, 2)).astype(np.float32)
  maps.draw_errors(tmp_path / "e.png", true + 1.0, true)
  assert Image.open(tmp_path / "e.png").size == (1200, 620)
  maps.plot_accuracy_curve(tmp_path / "c.png", {"model": rng.uniform(0, 5000, 100)})
  assert (tmp_path / "c.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="2 true locations"):
    maps.draw_errors(tmp_path / "x.png", true[:3], true[:2])
