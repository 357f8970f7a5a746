"""A packaged copy of the MP-16 fine partition (cells_50_1000.csv): where Flickr photos are, and how many.

The Earth-patches dataset samples its locations like MP-16's photos. The shared metadata folder is not there
in an installed package (e.g. in Colab), so the package ships a compact copy, derived by
`write_asset(shared_data_dir() / "partitions/cells_50_1000.csv")` and checked against that file by the tests:
gzip CSV `hex_id,level,imgs_per_cell,latitude_mean,longitude_mean`, coordinates rounded to 1e-6 degree,
rows in class-label order.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import pathlib

import numpy as np

from translocator_jax import paths
from translocator_jax.geo import cells

ASSET_NAME = "mp16_fine_cells.csv.gz"
_HEADER = ("hex_id", "level", "imgs_per_cell", "latitude_mean", "longitude_mean")


@dataclasses.dataclass(frozen=True)
class FineCells:
  hex_ids: tuple[str, ...]
  levels: np.ndarray   # int32 [C] S2 level of each cell
  counts: np.ndarray   # int64 [C] MP-16 images in the cell
  latlon: np.ndarray   # float64 [C, 2] mean image coordinate

  def __len__(self) -> int:
    return len(self.hex_ids)


def asset_path() -> pathlib.Path:
  return paths.ASSETS_DIR / ASSET_NAME


def write_asset(partition_csv: str | pathlib.Path, output: str | pathlib.Path | None = None) -> pathlib.Path:
  """Derives the packaged copy from the shared fine partition CSV."""
  output = pathlib.Path(output) if output else asset_path()
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(_HEADER)
  partition = cells.load_partition_csv(partition_csv)
  for hex_id, level, count, (lat, lon) in zip(partition.hex_ids, partition.levels, partition.counts,
                                              partition.latlon_mean64):
    writer.writerow((hex_id, int(level), int(count), f"{lat:.6f}", f"{lon:.6f}"))
  output.parent.mkdir(parents=True, exist_ok=True)
  # mtime=0: the same input gives the same bytes.
  with open(output, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
    f.write(buf.getvalue().encode())
  return output


def load_fine_cells(path: str | pathlib.Path | None = None) -> FineCells:
  """Reads the packaged copy (or another file written by write_asset)."""
  path = pathlib.Path(path) if path else asset_path()
  with gzip.open(path, "rt", newline="") as f:
    reader = csv.reader(f)
    header = tuple(next(reader))
    if header != _HEADER:
      raise ValueError(f"{path}: header {header} != {_HEADER}")
    hex_ids, levels, counts, latlon = [], [], [], []
    for lineno, row in enumerate(reader, start=2):
      try:
        hex_ids.append(row[0])
        levels.append(int(row[1]))
        counts.append(int(row[2]))
        latlon.append((float(row[3]), float(row[4])))
      except (IndexError, ValueError) as e:
        raise ValueError(f"{path}, line {lineno}: bad row {row!r}: {e}") from e
  return FineCells(hex_ids=tuple(hex_ids), levels=np.asarray(levels, np.int32),
                   counts=np.asarray(counts, np.int64), latlon=np.asarray(latlon, np.float64))
