"""Sampling Earth-patch locations like Flickr photos, and cutting the patches out of the global rasters.

A location is drawn like an MP-16 photo: a fine cell of cells_50_1000.csv picked in proportion to its image
count, then a point around the cell's mean image coordinate (Gaussian, sigma a quarter of the cell's S2 edge).
A patch is a square of `patch_km` on the ground around the location, resampled on a `patch_px` grid: a random
offset of the location inside the patch, a random rotation, and colour changes (season, haze, brightness) per
example. Everything is vectorised numpy over chunks of patches; the rasters are decoded once per process.

Geometry (`patch_sample_latlon`): output pixel (i, j) sits at patch coordinates u = (j + .5) / P - .5 (east),
v = .5 - (i + .5) / P (north), in units of patch_km. Its ground offset from the location is
R(theta) @ ((u, v) * patch_km + offset_km); north offsets map to latitude at 1 / KM_PER_DEGREE, east offsets to
longitude at 1 / (KM_PER_DEGREE * cos(location latitude)). RGB is sampled bilinearly, classes by nearest pixel;
longitudes wrap, latitudes clamp at the poles.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from translocator_jax.data.earth_patches import cells as fine_cells_lib
from translocator_jax.data.earth_patches import rasters

KM_PER_DEGREE = 111.195  # great-circle km per degree of latitude (R = 6371 km)
S2_FACE_EDGE_KM = 10_007.5  # a level-0 S2 face spans 90 degrees
MIN_COS_LAT = 0.05  # caps the longitude stretch near the poles

# Scene label from the patch's water share: open water (>= 2/3), coast (between), land (<= 1/3; ice counts as
# land). Ice-dominant patches practically never occur where photos are taken (0 in 4096 draws), so a
# water / land / ice label would leave one of the three classes empty.
SCENE_NAMES = ("water", "coast", "land")
WATER_SHARE_THRESHOLDS = (1 / 3, 2 / 3)


@dataclasses.dataclass(frozen=True)
class RenderParams:
  """Per-example draws; arrays over N examples."""
  latlon: np.ndarray       # float64 [N, 2] the example's location (its label)
  offset_km: np.ndarray    # float64 [N, 2] (east, north) position of the patch centre relative to the location
  theta: np.ndarray        # float64 [N] rotation, radians
  season: np.ndarray       # float32 [N] in [-1, 1]: < 0 browner (dry season), > 0 greener
  haze: np.ndarray         # float32 [N] in [0, max_haze]: blend towards a pale blue-grey
  brightness: np.ndarray   # float32 [N] gain

  def __len__(self) -> int:
    return len(self.theta)

  def take(self, idx) -> "RenderParams":
    return RenderParams(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def sample_locations(rng: np.random.Generator, n: int, cells: fine_cells_lib.FineCells | None = None,
                     min_sigma_km: float = 0.0) -> np.ndarray:
  """[n, 2] float64 (lat, lon): a fine cell drawn by image count, then a Gaussian point around its mean."""
  cells = cells or fine_cells_lib.load_fine_cells()
  p = cells.counts / cells.counts.sum()
  idx = rng.choice(len(cells), size=n, p=p)
  sigma_km = np.maximum(S2_FACE_EDGE_KM / 2.0 ** cells.levels[idx] / 4.0, min_sigma_km)
  d = rng.normal(size=(n, 2)) * sigma_km[:, None]
  lat0 = cells.latlon[idx, 0]
  lat = np.clip(lat0 + d[:, 1] / KM_PER_DEGREE, -89.9, 89.9)
  coslat = np.maximum(np.cos(np.deg2rad(lat0)), MIN_COS_LAT)
  lon = (cells.latlon[idx, 1] + d[:, 0] / (KM_PER_DEGREE * coslat) + 180.0) % 360.0 - 180.0
  return np.stack([lat, lon], -1)


def sample_params(rng: np.random.Generator, latlon: np.ndarray, patch_km: float, *, max_offset: float = 0.25,
                  max_haze: float = 0.35, brightness: tuple[float, float] = (0.85, 1.15)) -> RenderParams:
  """Random crop offset (up to max_offset * patch_km per axis), rotation and colour draws for each location."""
  n = len(latlon)
  return RenderParams(
      latlon=np.asarray(latlon, np.float64),
      offset_km=rng.uniform(-max_offset, max_offset, size=(n, 2)) * patch_km,
      theta=rng.uniform(0.0, 2.0 * np.pi, size=n),
      season=rng.uniform(-1.0, 1.0, size=n).astype(np.float32),
      haze=rng.uniform(0.0, max_haze, size=n).astype(np.float32),
      brightness=rng.uniform(*brightness, size=n).astype(np.float32),
  )


def patch_sample_latlon(params: RenderParams, patch_px: int, patch_km: float) -> np.ndarray:
  """[N, P, P, 2] float64 (lat, lon) of every output pixel (see the module docstring)."""
  centres = (np.arange(patch_px) + 0.5) / patch_px - 0.5
  u = centres[None, None, :]                       # east, by column
  v = -centres[None, :, None]                      # north, by row
  x = u * patch_km + params.offset_km[:, 0, None, None]
  y = v * patch_km + params.offset_km[:, 1, None, None]
  c, s = np.cos(params.theta)[:, None, None], np.sin(params.theta)[:, None, None]
  east = c * x - s * y
  north = s * x + c * y
  lat0 = params.latlon[:, 0, None, None]
  coslat = np.maximum(np.cos(np.deg2rad(lat0)), MIN_COS_LAT)
  lat = np.clip(lat0 + north / KM_PER_DEGREE, -89.999, 89.999)
  lon = (params.latlon[:, 1, None, None] + east / (KM_PER_DEGREE * coslat) + 180.0) % 360.0 - 180.0
  return np.stack([lat, lon], -1)


def _sample_nearest(raster: np.ndarray, rc: np.ndarray) -> np.ndarray:
  h, w = raster.shape[:2]
  r = np.clip(np.rint(rc[..., 0]).astype(np.int64), 0, h - 1)
  c = np.rint(rc[..., 1]).astype(np.int64) % w
  return raster[r, c]


def _sample_bilinear(raster: np.ndarray, rc: np.ndarray) -> np.ndarray:
  h, w = raster.shape[:2]
  r = np.clip(rc[..., 0], 0, h - 1)
  r0 = np.minimum(np.floor(r).astype(np.int64), h - 2)
  fr = (r - r0)[..., None].astype(np.float32)
  c0f = np.floor(rc[..., 1])
  fc = (rc[..., 1] - c0f)[..., None].astype(np.float32)
  c0 = c0f.astype(np.int64) % w
  c1 = (c0 + 1) % w
  top = raster[r0, c0] * (1 - fc) + raster[r0, c1] * fc
  bottom = raster[r0 + 1, c0] * (1 - fc) + raster[r0 + 1, c1] * fc
  return top * (1 - fr) + bottom * fr


def apply_colour(rgb: np.ndarray, params: RenderParams) -> np.ndarray:
  """Season, haze and brightness on float RGB [N, P, P, 3] in [0, 255]; returns uint8."""
  s = params.season[:, None, None, None]
  # Dry season: green down, red up a little; wet season: the opposite.
  gain = 1.0 + s * np.array([-0.08, 0.10, -0.02], np.float32)
  out = rgb * gain * params.brightness[:, None, None, None]
  h = params.haze[:, None, None, None]
  out = out * (1.0 - h) + h * np.array([200.0, 210.0, 225.0], np.float32)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_patches(params: RenderParams, patch_px: int, patch_km: float,
                   source: rasters.Rasters | None = None, colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(rgb uint8 [N, P, P, 3], classes uint8 [N, P, P]) for the given draws."""
  source = source or rasters.load_rasters()
  rc = rasters.latlon_to_pixel(patch_sample_latlon(params, patch_px, patch_km))
  classes = _sample_nearest(source.classes, rc)
  rgb = _sample_bilinear(source.rgb, rc)  # float32
  if colour:
    return apply_colour(rgb, params), classes
  return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), classes


def scene_labels(classes: np.ndarray) -> np.ndarray:
  """[N] int32 index into SCENE_NAMES from the share of water pixels in each patch."""
  water = np.isin(classes.reshape(len(classes), -1), rasters.WATER_CLASSES).mean(-1)
  lo, hi = WATER_SHARE_THRESHOLDS
  return np.where(water >= hi, 0, np.where(water <= lo, 2, 1)).astype(np.int32)
