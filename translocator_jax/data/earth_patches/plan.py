"""What an Earth-patches build draws: its options and presets, every per-example draw (the plan: locations,
render parameters, partitions from the training locations, cells), the rendered records, and the sidecar of
partition CSVs and metadata. The same options give the same plan, byte for byte; data/earth_patches/dataset.py
builds and opens the TFDS dataset from it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
from typing import Any, Iterator

import numpy as np

from translocator_jax import errors
from translocator_jax.data.earth_patches import rasters
from translocator_jax.data.earth_patches import render as earth_render
from translocator_jax.data.records import schema
from translocator_jax.geo import cells as cells_lib

NAME = "earth_patches"
VERSION = "1.0.0"
META_FILE = "earth_patches_meta.json"
PARTITIONS_DIR = "partitions"
SPLITS = ("train", "validation", "test")
SCENE_NAMES = earth_render.SCENE_NAMES
CLASS_NAMES = rasters.CLASS_NAMES
NUM_SEG_CLASSES = rasters.NUM_CLASSES
PALETTE = rasters.PALETTE
_RENDER_PIXELS = 1 << 20  # output pixels rendered at once (bounds the float64 coordinate arrays to ~50 MB)
_MIN_SIGMA_KM = 0.5  # photo scatter floor: keeps draws in the tiniest (level-30) cells distinct


@dataclasses.dataclass(frozen=True)
class Options:
  """What a build depends on (a BuilderConfig carries one; its fields are ensure_built's overrides)."""
  num_train: int = 16_000
  num_validation: int = 2_000
  num_test: int = 2_000
  patch_px: int = 48
  patch_km: float = 360.0          # ground side of a patch; ~7.5 km a pixel at 48 px, near bmng's resolution
  max_offset: float = 0.25         # the location sits up to this fraction of patch_km off the patch centre
  max_haze: float = 0.35
  # (tau_min, tau_max) of build_partition for coarse, middle, fine: MP-16's 50/5000, 50/2000, 50/1000 scaled
  # to ~16k training locations (few drops, a few dozen to a few hundred classes).
  taus: tuple[tuple[int, int], ...] = ((4, 800), (4, 320), (4, 120))
  jpeg_quality: int = 90
  seed: int = 0

  def __post_init__(self):
    for name in ("num_train", "num_validation", "num_test", "patch_px"):
      if int(getattr(self, name)) <= 0:
        raise errors.ConfigError(f"earth_patches option {name} must be > 0, got {getattr(self, name)}")
    if not float(self.patch_km) > 0:
      raise errors.ConfigError(f"earth_patches option patch_km must be > 0, got {self.patch_km}")
    if len(self.taus) != schema.NUM_PARTITIONS or any(len(t) != 2 or t[0] >= t[1] for t in self.taus):
      raise errors.ConfigError(f"earth_patches option taus must be {schema.NUM_PARTITIONS} (tau_min < tau_max) pairs, "
                               f"got {self.taus}")

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["taus"] = [list(t) for t in self.taus]
    return d


PRESETS = {
    "default": Options(),
    "tiny": Options(num_train=240, num_validation=60, num_test=60, patch_px=32, taus=((2, 80), (2, 40), (2, 16))),
}


def resolve_options(config: str = "default", **overrides) -> tuple[str, Options]:
  """(config name, Options): a preset, or a preset with overrides under a name derived from them."""
  if config not in PRESETS:
    raise errors.ConfigError(f"unknown earth_patches config {config!r}; known: {sorted(PRESETS)}")
  if not overrides:
    return config, PRESETS[config]
  fields = {f.name for f in dataclasses.fields(Options)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise errors.ConfigError(f"unknown earth_patches options {unknown}; known: {sorted(fields)}")
  if "taus" in overrides:
    overrides["taus"] = tuple(tuple(int(x) for x in t) for t in overrides["taus"])
  options = dataclasses.replace(PRESETS[config], **overrides)
  if options == PRESETS[config]:
    return config, options
  digest = hashlib.sha1(json.dumps(options.to_json(), sort_keys=True).encode()).hexdigest()[:10]
  return f"{config}_{digest}", options


_CLI_OPTIONS = ("num_train", "num_validation", "num_test", "patch_px", "patch_km", "seed", "taus")


def rebuild_command(root: str | os.PathLike, name: str, options: Options) -> str:
  """The data_prep command that builds config `name` with `options` under the TFDS data dir `root`."""
  preset = name if name in PRESETS else name.rsplit("_", 1)[0]
  base = PRESETS.get(preset, PRESETS["default"])
  changed = {f.name for f in dataclasses.fields(Options) if getattr(options, f.name) != getattr(base, f.name)}
  if changed - set(_CLI_OPTIONS):  # options the command line cannot set: the Python call that builds it
    kw = ", ".join(f"{k}={getattr(options, k)!r}" for k in sorted(changed))
    return (f"python -c \"from translocator_jax.data.earth_patches import dataset; "
            f"dataset.ensure_built({os.fspath(root)!r}, {preset!r}, {kw})\"")
  flags = "".join(f" --{k.replace('_', '-')} " + (json.dumps([list(t) for t in options.taus]).replace(" ", "")
                                                 if k == "taus" else str(getattr(options, k)))
                  for k in _CLI_OPTIONS if k in changed)
  return f"python -m data_prep.build_earth_patches --output {os.fspath(root)} --config {preset}{flags}"



@dataclasses.dataclass
class Plan:
  """Every per-example draw of a build, by split (the same options give the same plan)."""
  params: dict[str, earth_render.RenderParams]
  cells: dict[str, np.ndarray]   # int32 [N, 3]
  partitions: list[Any]          # geo.cells.Partition, coarse -> fine


def _distinct_locations(rng: np.random.Generator, n: int) -> np.ndarray:
  """n locations whose float32 (lat, lon) pairs are all different (redraws the rare repeats)."""
  latlon = earth_render.sample_locations(rng, n, min_sigma_km=_MIN_SIGMA_KM)
  for _ in range(100):
    key = latlon.astype(np.float32)
    _, first = np.unique(key, axis=0, return_index=True)
    repeats = np.setdiff1d(np.arange(n), first)
    if not len(repeats):
      return latlon
    latlon[repeats] = earth_render.sample_locations(rng, len(repeats), min_sigma_km=_MIN_SIGMA_KM)
  raise RuntimeError("could not draw distinct Earth-patch locations")


def make_plan(options: Options) -> Plan:
  """Locations, render draws, partitions (from the training locations) and cells, all from options.seed."""

  sizes = options.split_sizes()
  rng = np.random.default_rng(options.seed)
  latlon = _distinct_locations(rng, sum(sizes.values()))
  params = earth_render.sample_params(rng, latlon, options.patch_km, max_offset=options.max_offset,
                                      max_haze=options.max_haze)
  by_split, start = {}, 0
  for split in SPLITS:
    by_split[split] = params.take(slice(start, start + sizes[split]))
    start += sizes[split]
  train_latlon = by_split["train"].latlon.astype(np.float32)
  partitions = [cells_lib.build_partition(train_latlon, tau_min=t0, tau_max=t1) for t0, t1 in options.taus]
  cells = {split: np.stack([np.asarray(p.assign(by_split[split].latlon.astype(np.float32)), np.int32)
                            for p in partitions], -1)
           for split in SPLITS}
  return Plan(params=by_split, cells=cells, partitions=partitions)


def render_split(plan: Plan, split: str, options: Options, start: int = 0,
                 stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
  """(index, record) for examples [start, stop) of a split, records in the schema (images encoded)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  params = plan.params[split]
  stop = len(params) if stop is None else stop
  chunk = max(1, _RENDER_PIXELS // options.patch_px ** 2)
  for lo in range(start, stop, chunk):
    hi = min(lo + chunk, stop)
    p = params.take(slice(lo, hi))
    rgb, classes = earth_render.render_patches(p, options.patch_px, options.patch_km)
    scenes = earth_render.scene_labels(classes)
    for k in range(hi - lo):
      i = lo + k
      jpeg, png = io.BytesIO(), io.BytesIO()
      Image.fromarray(rgb[k]).save(jpeg, format="JPEG", quality=options.jpeg_quality)
      Image.fromarray(classes[k]).save(png, format="PNG")
      yield i, {
          schema.IMAGE: jpeg.getvalue(),
          schema.SEGMENTATION: png.getvalue(),
          schema.LATLON: p.latlon[k].astype(np.float32),
          schema.SCENE_S3: np.int32(scenes[k]),
          schema.SCENE_S16: np.int32(schema.UNKNOWN),
          schema.SCENE_S365: np.int32(schema.UNKNOWN),
          schema.CELLS: plan.cells[split][i],
          schema.IMAGE_ID: f"{split}/{i:06d}",
      }


def write_sidecar(plan: Plan, options: Options, directory: pathlib.Path) -> None:
  """The three partition CSVs and the metadata JSON next to the TFDS files."""

  part_dir = directory / PARTITIONS_DIR
  part_dir.mkdir(parents=True, exist_ok=True)
  for name, p in zip(schema.PARTITION_NAMES, plan.partitions):
    cells_lib.write_partition_csv(p, part_dir / f"cells_{name}.csv")
  meta = {
      "name": NAME,
      "options": options.to_json(),
      "class_names": list(CLASS_NAMES),
      "palette": PALETTE.tolist(),
      "scene_names": list(SCENE_NAMES),
      "partition_files": [f"{PARTITIONS_DIR}/cells_{n}.csv" for n in schema.PARTITION_NAMES],
      "partition_classes": [int(p.num_classes) for p in plan.partitions],
      "num_examples": options.split_sizes(),
      "cells_unassigned": {s: int((plan.cells[s] < 0).any(-1).sum()) for s in SPLITS},
  }
  (directory / META_FILE).write_text(json.dumps(meta, indent=1))
