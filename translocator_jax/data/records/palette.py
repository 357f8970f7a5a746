"""The ADE20K-150 palette and colourised-map -> class-index conversion.

The published segmentation maps are colourised PNGs (one ADE20K colour per class); some have been through JPEG, so
each pixel is mapped to the *nearest* palette colour (ties -> lowest class index, `nearest_class_exact`). A map is
converted by one gather from an exact full table: uint8 [2^24], the class of every 24-bit colour (16 MiB).

Building that table with a [colours, 150] distance search would take minutes, so it goes through bins: RGB
quantised to 6 bits per channel, each bin holding the few palette colours that can be nearest to any colour in it
(at most 6); a colour is compared with those only, and bins with more candidates (rare) use the exact search. The
table is built once per machine (seconds) and cached under paths.cache_dir(), keyed by the palette's colours, so
the worker processes of a dataset build load it instead of building it.

Note: the CSAIL palette gives road (6) and skyscraper (48) the same colour (140, 140, 140); a colourised map cannot
tell them apart and both read as 6. Palette-mode PNGs written with this palette (data/segmenter.py) keep the exact
indices.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np

from translocator_jax import paths

NUM_CLASSES = 150
PALETTE_FILE = "ade20k_150_palette.json"
_BITS = 6  # 64^3 bins of 4x4x4 colours: a 256 KiB table.
_SHIFT = 8 - _BITS
_CANDIDATES = 6  # Palette colours kept per bin; bins needing more use the exact search.


@functools.lru_cache(maxsize=None)
def load_palette() -> tuple[np.ndarray, tuple[str, ...]]:
  """(colours uint8 [150, 3], class names) from the packaged asset."""
  with open(paths.ASSETS_DIR / PALETTE_FILE) as f:
    data = json.load(f)
  rgb = np.asarray(data["rgb"], np.uint8)
  if rgb.shape != (NUM_CLASSES, 3) or len(data["names"]) != NUM_CLASSES:
    raise ValueError(f"{PALETTE_FILE}: expected {NUM_CLASSES} colours and names, got {rgb.shape}")
  return rgb, tuple(data["names"])


def palette() -> np.ndarray:
  """uint8 [150, 3]: the colour of each ADE20K class."""
  return load_palette()[0]


def nearest_class_exact(rgb: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
  """Reference: index of the nearest palette colour for uint8 [..., 3] pixels (ties -> lowest index)."""
  colours = palette() if colours is None else colours
  flat = rgb.reshape(-1, 3).astype(np.int32)
  out = np.empty(len(flat), np.uint8)
  cols = colours.astype(np.int32)
  for start in range(0, len(flat), 65536):  # Bounded memory: 64k x 150 distances at a time.
    chunk = flat[start:start + 65536]
    d = ((chunk[:, None, :] - cols[None]) ** 2).sum(-1)
    out[start:start + len(chunk)] = d.argmin(-1)
  return out.reshape(rgb.shape[:-1])


def _candidate_bins(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [64^3, 6] candidate classes per bin, sorted; bool [64^3] bins that need the exact search)."""
  n = 1 << _BITS
  centres = (np.arange(n) << _SHIFT) + ((1 << _SHIFT) - 1) / 2.0
  grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
  cols = colours.astype(np.float32)
  # Every colour of a bin is within half a bin diagonal r of the bin centre, so its nearest palette colour is
  # among those no further than d_min + 2r from the centre: those candidates (few) are kept per bin.
  slack = np.sqrt(3.0) * (1 << _SHIFT) + 0.05  # + float32 rounding margin.
  candidates = np.empty((len(grid), _CANDIDATES), np.uint8)
  overflow = np.zeros(len(grid), bool)
  for start in range(0, len(grid), 32768):
    g = grid[start:start + 32768]
    d2 = (g * g).sum(1)[:, None] - 2.0 * g @ cols.T + (cols * cols).sum(1)[None]
    d = np.sqrt(np.maximum(d2, 0.0))
    near = d <= d.min(1, keepdims=True) + slack
    overflow[start:start + len(g)] = near.sum(1) > _CANDIDATES
    best = np.argpartition(d, _CANDIDATES - 1, axis=1)[:, :_CANDIDATES]
    # Candidates beyond the slack are replaced by the nearest one (harmless duplicates), then sorted by class
    # index so that argmin over candidates breaks ties towards the lowest index, like the exact search.
    best = np.where(np.take_along_axis(near, best, 1), best, d.argmin(1)[:, None])
    candidates[start:start + len(g)] = np.sort(best, axis=1)
  return candidates, overflow


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
  """uint32 [...] 0xRRGGBB of uint8 [..., 3] colours: the index into the full table."""
  rgb = np.asarray(rgb)
  return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]


def _build_table(colours: np.ndarray) -> np.ndarray:
  candidates, overflow = _candidate_bins(colours)
  cols = colours.astype(np.int32)
  table = np.empty(1 << 24, np.uint8)
  step = 1 << 18
  for start in range(0, 1 << 24, step):
    packed = np.arange(start, start + step, dtype=np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(np.int32)
    bins = ((rgb[:, 0] >> _SHIFT) << (2 * _BITS)) | ((rgb[:, 1] >> _SHIFT) << _BITS) | (rgb[:, 2] >> _SHIFT)
    cand = candidates[bins]                                             # [step, 6]
    dist = np.zeros(cand.shape, np.int32)
    for c in range(3):
      diff = rgb[:, c:c + 1] - cols[cand, c]
      dist += diff * diff
    out = np.take_along_axis(cand, dist.argmin(1)[:, None], 1)[:, 0]
    hard = overflow[bins]
    if hard.any():
      out[hard] = nearest_class_exact(rgb[hard].astype(np.uint8), colours)
    table[start:start + step] = out
  return table


@functools.lru_cache(maxsize=4)
def _table_for(colour_bytes: bytes) -> np.ndarray:
  colours = np.frombuffer(colour_bytes, np.uint8).reshape(-1, 3)
  key = hashlib.sha256(colour_bytes + b"nearest-v1").hexdigest()[:16]
  path = paths.cache_dir() / f"palette_table_{key}.npy"
  try:
    table = np.load(path, allow_pickle=False)
    if table.shape == (1 << 24,) and table.dtype == np.uint8:
      return table
  except (OSError, ValueError):
    pass
  table = _build_table(colours)
  try:  # A cache that cannot be written (read-only home) only costs the next process a rebuild.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
      np.save(f, table)
    os.replace(tmp, path)
  except OSError:
    pass
  return table


def lookup_table(colours: np.ndarray | None = None) -> np.ndarray:
  """uint8 [2^24]: the nearest palette class of every colour 0xRRGGBB (equal to nearest_class_exact)."""
  colours = palette() if colours is None else np.asarray(colours, np.uint8)
  return _table_for(np.ascontiguousarray(colours, np.uint8).tobytes())


class PaletteMapper:
  """Maps colourised segmentation maps (uint8 [H, W, 3]) to class indices (uint8 [H, W]), exactly."""

  def __init__(self, colours: np.ndarray | None = None):
    self.colours = palette() if colours is None else np.asarray(colours, np.uint8)
    self.table = lookup_table(self.colours)

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
      raise ValueError(f"expected uint8 [H, W, 3] colours, got {rgb.dtype} {rgb.shape}")
    return self.table[pack_rgb(rgb)]


@functools.lru_cache(maxsize=None)
def default_mapper() -> PaletteMapper:
  """One mapper per process (its table is loaded from the cache, or built once per machine)."""
  return PaletteMapper()
