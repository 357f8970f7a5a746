"""Adaptive S2 geo-cell partitions (Mueller-Budack et al. 2018), vectorised in numpy.

build_partition: put every coordinate in its min_level S2 cell; a cell with more than tau_max members is
split into its children (up to level 30); cells with tau_min or fewer members are dropped. An image's class
is the partition cell that is an ancestor-or-self of its leaf cell (cells are disjoint, so at most one).

Leaf cell ids are computed in numpy (lat/lon -> xyz -> face/uv -> st -> ij -> Hilbert position with
s2sphere's lookup table; checked against s2sphere in tests), and the parent at level L of a cell id is a
bit mask: (id & -lsb(L)) | lsb(L), lsb(L) = 1 << 2 * (30 - L). Partition CSV files use the GeoEstimation
layout: two metadata lines, then class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean, with hex_id
an S2 token. Classes of a built partition are ordered by cell id; latlon_mean is the plain mean of the
member coordinates (as in GeoEstimation). Partitions built here also carry each cell's spatial spread (the RMS
great-circle distance of its members from the mean, km) as a sixth CSV column, spread_km, which the calibrated
confidence radius reads (geo/confidence.py); files without it (the published MP-16 ones) still load.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from s2sphere import sphere as _s2

from translocator_jax import errors

MAX_LEVEL = 30
_POS_BITS = 2 * MAX_LEVEL + 1
_LOOKUP_POS = np.asarray(_s2.LOOKUP_POS, np.uint64)
_HEADER = "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean"
_SPREAD_COLUMN = "spread_km"
_EARTH_SURFACE_KM2 = 4 * np.pi * 6371.0088 ** 2


def _lsb(level) -> np.ndarray:
  return np.left_shift(np.uint64(1), (2 * (MAX_LEVEL - np.asarray(level, np.int64))).astype(np.uint64))


def leaf_cell_ids(latlon) -> np.ndarray:
  """S2 leaf (level 30) cell ids, uint64 [N], of [N, 2] (lat, lon) degrees."""
  latlon = np.asarray(latlon, np.float64).reshape(-1, 2)
  lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
  cos_lat = np.cos(lat)
  p = np.stack([np.cos(lon) * cos_lat, np.sin(lon) * cos_lat, np.sin(lat)], 1)
  a = np.abs(p)
  # s2sphere's largest_abs_component tie-breaking.
  axis = np.where(a[:, 0] > a[:, 1], np.where(a[:, 0] > a[:, 2], 0, 2), np.where(a[:, 1] > a[:, 2], 1, 2))
  rows = np.arange(len(p))
  face = axis + 3 * (p[rows, axis] < 0)
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    us = [y / x, -x / y, -x / z, z / x, z / y, -y / z]
    vs = [z / x, z / y, -y / z, y / x, -x / y, -x / z]
  u = np.choose(face, us)
  v = np.choose(face, vs)

  def st_to_ij(w):
    with np.errstate(invalid="ignore"):  # np.where evaluates both branches
      s = np.where(w >= 0, 0.5 * np.sqrt(1 + 3 * w), 1 - 0.5 * np.sqrt(1 - 3 * w))
    return np.clip(np.floor((1 << MAX_LEVEL) * s), 0, (1 << MAX_LEVEL) - 1).astype(np.uint64)

  i, j = st_to_ij(u), st_to_ij(v)
  face = face.astype(np.uint64)
  n = face << np.uint64(_POS_BITS - 1)
  bits = face & np.uint64(_s2.SWAP_MASK)
  mask = np.uint64(15)
  for k in range(7, -1, -1):
    shift = np.uint64(4 * k)
    bits = bits + (((i >> shift) & mask) << np.uint64(6)) + (((j >> shift) & mask) << np.uint64(2))
    bits = _LOOKUP_POS[bits]
    n |= (bits >> np.uint64(2)) << np.uint64(8 * k)
    bits &= np.uint64(_s2.SWAP_MASK | _s2.INVERT_MASK)
  return n * np.uint64(2) + np.uint64(1)


def parent_ids(cell_ids, level) -> np.ndarray:
  """Ancestor at `level` (scalar or per-element) of uint64 cell ids (at that level or finer)."""
  lsb = _lsb(level)
  return (np.asarray(cell_ids, np.uint64) & ~(lsb - np.uint64(1)) & ~lsb) | lsb


def cell_levels(cell_ids) -> np.ndarray:
  """S2 level of each uint64 cell id."""
  ids = np.asarray(cell_ids, np.uint64)
  low = ids & (~ids + np.uint64(1))           # lowest set bit
  tz = np.log2(low.astype(np.float64)).round().astype(np.int64)
  return MAX_LEVEL - tz // 2


def token_to_id(token: str) -> int:
  return _s2.CellId.from_token(token).id()


def id_to_token(cell_id: int) -> str:
  return _s2.CellId(int(cell_id)).to_token()


@dataclasses.dataclass
class Partition:
  """An S2 partition: class c is cell hex_ids[c] with counts[c] training images, mean coordinate latlon_mean[c]."""
  hex_ids: list[str]
  counts: np.ndarray          # int64 [C]
  latlon_mean: np.ndarray     # float32 [C, 2]
  num_images: int = 0         # images the partition was built from (metadata line)
  spread_km: np.ndarray | None = None  # float64 [C]: RMS distance of the members from latlon_mean, when known

  def __post_init__(self):
    self.counts = np.asarray(self.counts, np.int64)
    # float64 copy for writing CSVs without losing digits; the float32 array is the public one.
    self.latlon_mean64 = np.asarray(self.latlon_mean, np.float64).reshape(-1, 2)
    self.latlon_mean = self.latlon_mean64.astype(np.float32)
    self.cell_ids = np.array([token_to_id(t) for t in self.hex_ids], np.uint64)
    self.levels = cell_levels(self.cell_ids)
    if not (len(self.hex_ids) == len(self.counts) == len(self.latlon_mean)):
      raise ValueError("hex_ids, counts and latlon_mean differ in length")
    if self.spread_km is not None:
      self.spread_km = np.asarray(self.spread_km, np.float64).reshape(-1)
      if len(self.spread_km) != len(self.hex_ids):
        raise ValueError("spread_km and hex_ids differ in length")
    self._by_level = {}
    for level in np.unique(self.levels):
      classes = np.nonzero(self.levels == level)[0]
      order = np.argsort(self.cell_ids[classes])
      self._by_level[int(level)] = (self.cell_ids[classes][order], classes[order])

  @property
  def num_classes(self) -> int:
    return len(self.hex_ids)

  def cell_spread_km(self) -> np.ndarray:
    """Each cell's spatial spread (km): measured on its members when the partition has it, else the RMS radius
    of a square of the cell's S2 area (an upper bound: photos crowd into a cell's towns)."""
    if self.spread_km is not None:
      return self.spread_km
    area = _EARTH_SURFACE_KM2 / (6.0 * 4.0 ** self.levels.astype(np.float64))
    return np.sqrt(area / 6.0)  # RMS distance from the centre of a square of side a is a / sqrt(6)

  def assign_ids(self, cell_ids) -> np.ndarray:
    """Class of each uint64 cell id (its ancestor-or-self cell in the partition), -1 for none."""
    cell_ids = np.asarray(cell_ids, np.uint64)
    levels = cell_levels(cell_ids)
    out = np.full(cell_ids.shape, -1, np.int32)
    for level, (ids, classes) in self._by_level.items():
      ok = levels >= level
      anc = parent_ids(cell_ids, level)
      pos = np.clip(np.searchsorted(ids, anc), 0, len(ids) - 1)
      hit = ok & (ids[pos] == anc)
      out[hit] = classes[pos[hit]]
    return out

  def assign(self, latlon) -> np.ndarray:
    """Class index (int32 [N]) of each (lat, lon) coordinate, -1 where no cell holds it."""
    return self.assign_ids(leaf_cell_ids(latlon))


def build_partition(latlon, tau_min: int, tau_max: int, min_level: int = 2,
                    max_level: int = MAX_LEVEL) -> Partition:
  """Adaptive partition of the coordinates (see module doc). Classes ordered by S2 cell id."""
  latlon = np.asarray(latlon, np.float64).reshape(-1, 2)
  leaves = leaf_cell_ids(latlon)
  order = np.argsort(leaves, kind="stable")
  leaves = leaves[order]             # parents of sorted leaves are sorted: runs are cells
  active = np.arange(len(leaves))
  kept_ids, kept_starts, kept_ends = [], [], []
  level = min_level
  while active.size:
    parents = parent_ids(leaves[active], level)
    starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
    ends = np.r_[starts[1:], len(parents)]
    sizes = ends - starts
    split = (sizes > tau_max) & (level < max_level)
    keep = ~split & (sizes > tau_min)
    # `active` indexes sorted leaves and stays sorted, so a run of active is a contiguous member list.
    kept_ids.append(parents[starts[keep]])
    kept_starts.append(active[starts[keep]])
    kept_ends.append(active[ends[keep] - 1] + 1)
    run_split = np.repeat(split, sizes)
    active = active[run_split]
    level += 1
  ids = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.uint64)
  starts = np.concatenate(kept_starts).astype(np.int64) if kept_starts else np.zeros(0, np.int64)
  ends = np.concatenate(kept_ends).astype(np.int64) if kept_ends else np.zeros(0, np.int64)
  by_id = np.argsort(ids)
  ids, starts, ends = ids[by_id], starts[by_id], ends[by_id]
  # Members of a kept cell are exactly the sorted leaves in [start, end): descendants are contiguous.
  sorted_latlon = latlon[order]
  csum = np.vstack([np.zeros((1, 2)), np.cumsum(sorted_latlon, axis=0)])
  counts = ends - starts
  means = (csum[ends] - csum[starts]) / np.maximum(counts, 1)[:, None]
  return Partition([id_to_token(i) for i in ids], counts, means, num_images=len(latlon),
                   spread_km=_member_spread_km(sorted_latlon, starts, ends, means))


def _member_spread_km(sorted_latlon, starts, ends, means) -> np.ndarray:
  """RMS great-circle distance (km) of each cell's members, sorted_latlon[start:end], from its mean."""
  from translocator_jax.geo import distance  # pylint: disable=g-import-not-at-top  # jax, only when building
  counts = ends - starts
  cell = np.repeat(np.arange(len(starts)), counts)
  member = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
  sq = distance.haversine_km_numpy(sorted_latlon[member], means[cell]) ** 2
  return np.sqrt(np.bincount(cell, weights=sq, minlength=len(starts)) / np.maximum(counts, 1))


def load_partition_csv(path) -> Partition:
  """Read a GeoEstimation partition CSV (two metadata lines, header, rows ordered by class_label)."""
  path = pathlib.Path(path)
  lines = path.read_text(encoding="utf-8-sig").splitlines()
  num_images = 0
  header_at = None
  for i, line in enumerate(lines[:5]):
    if line.strip() in (_HEADER, f"{_HEADER},{_SPREAD_COLUMN}"):
      header_at = i
      break
    if line.startswith("num_images:"):
      num_images = int(line.split(":", 1)[1])
  if header_at is None:
    raise errors.DataError(f"{path}: header '{_HEADER}' not found in the first lines")
  with_spread = lines[header_at].strip() == f"{_HEADER},{_SPREAD_COLUMN}"
  hex_ids, counts, means, spreads = [], [], [], []
  for row_no, line in enumerate(lines[header_at + 1:], start=header_at + 2):
    if not line.strip():
      continue
    parts = line.split(",")
    try:
      if with_spread:
        label, token, count, lat, lon, spread = parts
        spreads.append(float(spread))
      else:
        label, token, count, lat, lon = parts
      if int(label) != len(hex_ids):
        raise ValueError(f"class_label {label} out of order (expected {len(hex_ids)})")
      hex_ids.append(token.strip())
      counts.append(int(count))
      means.append((float(lat), float(lon)))
    except ValueError as e:
      raise errors.DataError(f"{path}, line {row_no}: bad partition row {line!r}: {e}") from None
  return Partition(hex_ids, np.array(counts), np.array(means, np.float64).reshape(-1, 2), num_images,
                   spread_km=np.array(spreads) if with_spread else None)


def write_partition_csv(partition: Partition, path) -> None:
  """Write the GeoEstimation layout (the metadata lines as in the MP-16 files)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w") as f:
    spread = partition.spread_km
    header = _HEADER if spread is None else f"{_HEADER},{_SPREAD_COLUMN}"
    f.write(f"num_images: {partition.num_images}\nmin_concept_probability: ---\n{header}\n")
    for c, (token, count, (lat, lon)) in enumerate(zip(partition.hex_ids, partition.counts,
                                                       partition.latlon_mean64)):
      extra = "" if spread is None else f",{float(spread[c]):.4f}"
      f.write(f"{c},{token},{int(count)},{float(lat)!r},{float(lon)!r}{extra}\n")
