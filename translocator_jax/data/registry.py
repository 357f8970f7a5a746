"""Everything the project knows about a dataset, by name: where it is, its partitions and palette, the split
evaluation reads, the paper's row and the command that builds it.

Names: 'earth_patches' (the embedded demo set, built on first use), 'mp16' (training), the benchmarks 'im2gps',
'im2gps3k', 'yfcc4k', 'yfcc26k' (TFDS folders built by data_prep), and 'synthetic' (random in-memory examples for
tests, data/pipeline/synthetic.py). A dataset's folder is looked up under config.data.data_dir, else
$TFDS_DATA_DIR, else ~/tensorflow_datasets.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import ml_collections
import numpy as np

from translocator_jax import errors, paths
from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.records import palette as palette_lib
from translocator_jax.data.records import sources
from translocator_jax.geo import cells, metrics

# Datasets translocator-eval reads when the config names none; every dataset is evaluated on its 'test' split.
EVAL_DATASETS = ("im2gps", "im2gps3k", "yfcc4k", "yfcc26k", "earth_patches")
EVAL_SPLIT = "test"
# TransLocator (ViT-B/16), Pramanick et al. ECCV 2022, Table 1: % within 1 / 25 / 200 / 750 / 2500 km.
PAPER_ROWS = {
    "im2gps": (19.9, 48.1, 64.6, 75.6, 86.7),
    "im2gps3k": (11.8, 31.1, 46.7, 58.9, 80.1),
    "yfcc4k": (8.4, 18.6, 27.0, 41.1, 60.4),
}
# Metadata CSVs of the benchmarks in the shared benchmarks folder (yfcc4k's list is not there: pass --csv).
BENCHMARK_CSVS = {"im2gps": "im2gps_places365.csv", "im2gps3k": "im2gps3k_places365.csv",
                  "yfcc26k": "yfcc25600_places365.csv"}
MP16_PARTITION_FILES = ("cells_50_5000.csv", "cells_50_2000.csv", "cells_50_1000.csv")  # coarse, middle, fine
BUILD_COMMANDS = {
    "mp16": ("python -m data_prep.build_mp16 --csv mp16_places365.csv --images mp16_rgb_images.tgz "
             "--segmentations mp16_seg_images_PNG.tgz --output DATA_DIR/mp16 --workers 16"),
    **{name: (f"python -m data_prep.build_benchmark --name {name} --images {name}_rgb_images.tar.gz "
              f"--segmentations {name}_seg_images_PNG.tar.gz --output DATA_DIR/{name}")
       for name in BENCHMARK_CSVS},
    "yfcc4k": ("python -m data_prep.build_benchmark --name yfcc4k --csv yfcc4k.csv --images "
               "yfcc4k_rgb_images.tar.gz --segmentations yfcc4k_seg_images_PNG.tar.gz --output DATA_DIR/yfcc4k"),
}


class DatasetMissingError(errors.UserError, FileNotFoundError):
  """A dataset the config names is not on disk; the message says which command builds it."""


class MapsMissingError(errors.DataError):
  """A two-stream model was asked to train or evaluate on a set built without segmentation maps."""


@dataclasses.dataclass
class DatasetInfo:
  name: str
  tfds_dir: str | None             # the built TFDS dir (None for synthetic, or an unbuilt training set)
  partition_paths: tuple[str, ...] | None
  palette: np.ndarray | None        # [K, 3] uint8 (seg_input='palette')
  num_seg_classes: int              # 0 for a set without maps
  has_maps: bool = True             # False: built with --no-seg (records hold schema.NO_MAP)


def paper_table(name: str) -> dict[str, float] | None:
  """The paper's accuracies of a benchmark as an accuracy table (fractions), or None."""
  if name not in PAPER_ROWS:
    return None
  return {k: v / 100.0 for k, v in zip(metrics.ACC_KEYS, PAPER_ROWS[name])}


def mp16_partition_paths(partitions_dir: str | os.PathLike | None = None,
                         files: tuple[str, ...] = MP16_PARTITION_FILES) -> tuple[str, ...]:
  """The MP-16 partition CSVs (coarse -> fine): under partitions_dir, else the shared data folder's partitions/."""
  part_dir = pathlib.Path(partitions_dir) if partitions_dir else None
  if part_dir is None or (not part_dir.is_absolute() and not part_dir.exists()):
    part_dir = paths.shared_data_dir() / "partitions"
  return tuple(str(part_dir / f) for f in files)


def find_tfds_dir(data_dir: str | os.PathLike | None, name: str) -> pathlib.Path:
  """The built TFDS directory (the one holding dataset_info.json) of `name` under the data dir."""
  root = paths.tfds_data_dir(data_dir)
  base = root / name
  if (base / "dataset_info.json").exists():
    return base
  versions = sorted(base.glob("*/dataset_info.json")) if base.is_dir() else []
  if versions:
    return versions[-1].parent  # the newest version
  cmd = BUILD_COMMANDS.get(name, f"the data_prep builder of {name!r}").replace("DATA_DIR", str(root))
  raise DatasetMissingError(f"dataset {name!r} not found under {root} (looked for {root / name}/<version>/"
                            f"dataset_info.json). Build it with: {cmd}")


def dataset_info(config: ml_collections.ConfigDict, name: str, *, need_records: bool = True) -> DatasetInfo:
  """Where `name` lives, its partitions (coarse -> fine) and segmentation palette.

  need_records=False: the partitions and palette alone (tfds_dir None when the dataset is not built), which is
  all evaluation and prediction need of the training set.
  """
  if name == "synthetic":
    return DatasetInfo(name, None, None, None, config.model.num_seg_classes)
  if name == "earth_patches":
    info = earth_patches.ensure_built(data_dir=config.data.data_dir, **config.data.earth_patches)
    return DatasetInfo(name, str(info.data_dir), tuple(str(p) for p in info.partition_paths),
                       np.asarray(info.palette, np.uint8), int(info.num_seg_classes))
  try:
    tfds_dir = str(find_tfds_dir(config.data.data_dir, name))
  except DatasetMissingError:
    if need_records:
      raise
    tfds_dir = None
  parts = mp16_partition_paths(config.data.partitions_dir, config.data.partition_files)
  has_maps = tfds_dir is None or sources.has_segmentation_maps(tfds_dir)
  info = DatasetInfo(name, tfds_dir, parts, palette_lib.palette(), palette_lib.NUM_CLASSES if has_maps else 0,
                     has_maps)
  if need_records:
    require_maps(config, info)  # before anything is built or compiled for a run that cannot read the set
  return info


def require_maps(config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
  """Refuses (MapsMissingError) a two-stream model (config.model.fusion other than 'none') on a set without maps."""
  fusion = config.model.fusion
  if not info.has_maps and fusion != "none":
    raise MapsMissingError(
        f"dataset {info.name!r} ({info.tfds_dir}) has no segmentation maps (built with --no-seg), and "
        f"model.fusion={fusion!r} is a two-stream model that reads them: use an RGB-only model "
        "(model.fusion='none') or rebuild the dataset with maps (--seg MAPS or --segmenter MODEL_DIR)")


def load_partitions(info: DatasetInfo) -> list[cells.Partition] | None:
  """The [coarse, middle, fine] partitions of a dataset, or None when it has none (synthetic)."""
  if not info.partition_paths:
    return None
  return [cells.load_partition_csv(p) for p in info.partition_paths]


def validation_set(config: ml_collections.ConfigDict, info: DatasetInfo
                   ) -> tuple[DatasetInfo, str] | None:
  """(dataset, split) the run validates on: config.data.val ('name' or 'name:split', any registered dataset; a
  benchmark's split defaults to its evaluation split), else config.data.val_split of the training set, else None."""
  spec = config.data.val
  if spec:
    name, _, split = spec.partition(":")
    if name == info.name:
      return info, split or config.data.val_split or EVAL_SPLIT
    return dataset_info(config, name), split or EVAL_SPLIT
  split = config.data.val_split
  return (info, split) if split else None
