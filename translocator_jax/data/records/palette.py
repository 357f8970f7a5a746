"""The ADE20K-150 palette and colourised-map -> class-index conversion.

The published segmentation maps are colourised PNGs (one ADE20K colour per class); some have been through JPEG, so
each pixel is mapped to the *nearest* palette colour. Doing that with a [pixels, 150] distance matrix is slow, so a
3-D lookup table over RGB quantised to 6 bits per channel holds, per bin, the few palette colours that can be
nearest to any colour in the bin (at most 6); a pixel is compared with those only. Bins with more candidates (rare)
fall back to the exact search. The result equals the exact nearest-colour map (ties -> lowest class index).

Note: the CSAIL palette gives road (6) and skyscraper (48) the same colour (140, 140, 140); a colourised map cannot
tell them apart and both read as 6. Palette-mode PNGs written with this palette (data/segmenter.py) keep the exact
indices.
"""
from __future__ import annotations

import functools
import json

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


class PaletteMapper:
  """Maps colourised segmentation maps (uint8 [H, W, 3]) to class indices (uint8 [H, W]), exactly."""

  def __init__(self, colours: np.ndarray | None = None):
    self.colours = palette() if colours is None else np.asarray(colours, np.uint8)
    n = 1 << _BITS
    centres = (np.arange(n) << _SHIFT) + ((1 << _SHIFT) - 1) / 2.0
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    cols = self.colours.astype(np.float32)
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
    self._candidates = candidates
    self._overflow = overflow

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
      raise ValueError(f"expected uint8 [H, W, 3] colours, got {rgb.dtype} {rgb.shape}")
    flat = rgb.reshape(-1, 3)
    q = (flat >> _SHIFT).astype(np.int32)
    bins = (q[:, 0] << (2 * _BITS)) | (q[:, 1] << _BITS) | q[:, 2]
    cand = self._candidates[bins]  # [N, K]
    diff = flat[:, None, :].astype(np.int16) - self.colours[cand].astype(np.int16)
    dist = np.einsum("nkc,nkc->nk", diff.astype(np.int32), diff.astype(np.int32))
    out = np.take_along_axis(cand, dist.argmin(1)[:, None], 1)[:, 0]
    hard = self._overflow[bins]
    if hard.any():
      out[hard] = nearest_class_exact(flat[hard], self.colours)
    return out.reshape(rgb.shape[:2])


@functools.lru_cache(maxsize=None)
def default_mapper() -> PaletteMapper:
  """One mapper per process (building the table takes a fraction of a second)."""
  return PaletteMapper()
