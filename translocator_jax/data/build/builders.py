"""Dataset builders: MP-16, the benchmarks (Im2GPS, Im2GPS3k, YFCC26k, YFCC4k) and your own photos.

Each builder reads its metadata, matches it to image (and segmentation-map) files in a folder or a tarball,
records every problem it finds while matching, and hands the rest to `build.write_dataset`.

Published layout (Pramanick et al.'s tarballs; see their experiment_codes/dataset.py): the segmentation map of
image `<dir>/<stem>.jpg` is `<dir>/<stem>.png` in the map archive. `seg_name` (a format string over {id},
{stem}, {ext}) changes that rule. A common top folder in an archive is detected and ignored, and an id without
extension (YFCC4k lists) matches a file by its stem.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import posixpath
from typing import Sequence

import numpy as np
from tqdm import tqdm

from translocator_jax import errors, paths
from translocator_jax.data import registry
from translocator_jax.data.build import images as images_lib
from translocator_jax.data.build import segmenter as segmenter_lib
from translocator_jax.data.build import stores as inputs
from translocator_jax.data.build import writer as build
from translocator_jax.data.records import schema

DEFAULT_SEG_NAME = "{stem}.png"
PLACES365_COLUMNS = dict(id="IMG_ID", lat="LAT", lon="LON", s3="S3_Label", s16="S16_Label", s365="S365_Label")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MISSING_SEG_POLICIES = ("error", "skip", "segment")


def default_partition_paths() -> list[str]:
  """The MP-16 partitions (coarse -> fine) from the shared data folder."""
  try:
    root = paths.shared_data_dir() / "partitions"
  except FileNotFoundError as e:
    raise errors.BuildError(f"{e}; pass the partition CSVs explicitly (or build without cells)") from None
  files = [root / f"cells_50_{t}.csv" for t in (5000, 2000, 1000)]
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise errors.BuildError(f"partition files not found: {missing}")
  return [str(f) for f in files]


def seg_name_for(image_id: str, template: str = DEFAULT_SEG_NAME) -> str:
  stem, ext = posixpath.splitext(image_id)
  return template.format(id=image_id, stem=stem, ext=ext)


def _int_or_unknown(value) -> int:
  try:
    f = float(value)
  except (TypeError, ValueError):
    return schema.UNKNOWN
  return int(f) if math.isfinite(f) and f == int(f) else schema.UNKNOWN


def read_table(csv_path: os.PathLike | str, columns: dict) -> tuple[list[dict], list[dict]]:
  """Rows {row, id, lat, lon, scenes} of a metadata CSV, and the rows refused (duplicate or unsafe ids, no id).

  `columns` maps id/lat/lon (required) and s3/s16/s365 (optional: missing columns give -1) to CSV headers.
  """
  csv_path = pathlib.Path(csv_path)
  rows, bad, first_row = [], [], {}
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    need = [columns[k] for k in ("id", "lat", "lon")]
    absent = [c for c in need if c not in header]
    if absent:
      raise errors.BuildError(f"{csv_path}: missing column(s) {absent}; header is {header}")
    scene_cols = [columns.get(k) if columns.get(k) in header else None for k in ("s3", "s16", "s365")]
    for n, rec in enumerate(reader, start=2):  # Row numbers as a spreadsheet shows them (header = 1).
      where = f"{csv_path}:row {n}"
      image_id = inputs.normalise_name((rec.get(columns["id"]) or "").strip())
      if not image_id:
        bad.append({"source": where, "reason": "empty image id"})
        continue
      reason = inputs.unsafe_name_reason((rec.get(columns["id"]) or "").strip())
      if reason:
        bad.append({"source": where, "reason": f"image id: {reason}"})
        continue
      if image_id in first_row:
        bad.append({"source": where, "reason": f"duplicate image id {image_id!r} (first at row "
                                               f"{first_row[image_id]}): row skipped"})
        continue
      first_row[image_id] = n
      scenes = tuple(_int_or_unknown(rec.get(c)) if c else schema.UNKNOWN for c in scene_cols)
      rows.append({"row": n, "id": image_id, "lat": rec.get(columns["lat"]), "lon": rec.get(columns["lon"]),
                   "scenes": scenes})
  return rows, bad


def plan_items(rows: Sequence[dict], csv_path, rgb_store, seg_store, *, seg_name: str = DEFAULT_SEG_NAME,
               missing_seg: str = "skip", report_orphans: bool = True) -> tuple[list[build.Item], list[dict]]:
  """Matches metadata rows to files; returns (items sorted by id, skipped entries)."""
  if missing_seg not in MISSING_SEG_POLICIES:
    raise ValueError(f"missing_seg must be one of {MISSING_SEG_POLICIES}, got {missing_seg!r}")
  skipped = list(rgb_store.problems) + (list(seg_store.problems) if seg_store is not None else [])
  rgb_names = rgb_store.names()
  rgb_index = inputs.NameIndex(rgb_names, [r["id"] for r in rows[:20000]])
  seg_index = None
  if seg_store is not None:
    seg_index = inputs.NameIndex(seg_store.names(), [seg_name_for(r["id"], seg_name) for r in rows[:20000]])
  items, used_rgb, used_seg, no_seg = [], set(), set(), []
  for r in rows:
    name = rgb_index.lookup(r["id"])
    if name is None:
      skipped.append({"source": f"{csv_path}:row {r['row']} ({r['id']})", "reason": "image file not found"})
      continue
    if name in used_rgb:
      skipped.append({"source": f"{csv_path}:row {r['row']} ({r['id']})",
                      "reason": f"image file {name} already used by another row"})
      continue
    used_rgb.add(name)
    try:
      latlon = images_lib.check_latlon(r["lat"], r["lon"], where=f"{csv_path}:row {r['row']}")
    except images_lib.BadInput as e:
      skipped.append({"source": rgb_store.describe(name), "reason": str(e)})
      continue
    seg = seg_index.lookup(seg_name_for(r["id"], seg_name)) if seg_index is not None else None
    if seg is None:
      if missing_seg == "skip":
        skipped.append({"source": rgb_store.describe(name),
                        "reason": f"no segmentation map (looked for {seg_name_for(r['id'], seg_name)!r})"})
        continue
      no_seg.append(r["id"])
    else:
      used_seg.add(seg)
    items.append(build.Item(image_id=r["id"], rgb_name=name, seg_name=seg,
                            latlon=(float(latlon[0]), float(latlon[1])), scenes=r["scenes"]))
  if no_seg and missing_seg == "error":
    raise errors.BuildError(
        f"{len(no_seg)} of {len(rows)} images have no segmentation map (first: {no_seg[:5]}; map names from "
        f"{seg_name!r}). Pass the map folder/tarball, or a segmenter model (python -m data_prep.segment, or "
        "--segmenter MODEL_DIR) to make them.")
  if report_orphans:
    skipped += [{"source": rgb_store.describe(n), "reason": "no metadata row for this file"}
                for n in rgb_names if n not in used_rgb]
    if seg_store is not None:
      # Maps of images that are reported themselves (bad row, no row) are not reported a second time.
      of_images = {seg_index.lookup(seg_name_for(rgb_index.strip_name(n), seg_name)) for n in rgb_names}
      skipped += [{"source": seg_store.describe(n), "reason": "segmentation map without a matching image"}
                  for n in seg_store.names()
                  if n not in used_seg and n not in of_images and n.lower().endswith(PHOTO_SUFFIXES)]
  items.sort(key=lambda it: it.image_id)
  return items, skipped


def _stores(images, segmentations, staging):
  rgb_store = inputs.open_store(images, staging, "images")
  seg_store = inputs.open_store(segmentations, staging, "segmentations") if segmentations else None
  return rgb_store, seg_store


def check_model_dir(model_dir) -> None:
  """errors.BuildError unless `model_dir` looks like a saved transformers model (before any photo is read)."""
  if not os.path.isdir(model_dir):
    raise errors.BuildError(f"segmenter model folder not found: {model_dir}")
  if not os.path.isfile(os.path.join(model_dir, "config.json")):
    raise errors.BuildError(f"{model_dir}: not a transformers model folder (no config.json)")


def _options(name, split, output_dir, partition_paths, segmenter_dir, **kw) -> build.BuildOptions:
  if partition_paths is None:
    partition_paths = default_partition_paths()
  for p in partition_paths:
    if not os.path.isfile(p):
      raise errors.BuildError(f"partition file not found: {p}")
  if segmenter_dir:
    check_model_dir(segmenter_dir)
  return build.BuildOptions(name=name, split=split, output_dir=pathlib.Path(output_dir),
                            partition_paths=list(partition_paths), segmenter_dir=segmenter_dir, **kw)


def build_from_csv(*, name: str, split: str, csv_path, images, output_dir, segmentations=None,
                   columns: dict | None = None, seg_name: str = DEFAULT_SEG_NAME, missing_seg: str = "error",
                   segmenter_dir: str | None = None, partition_paths: Sequence[str] | None = None,
                   **options) -> dict:
  """Builds a dataset from a metadata CSV (Places365 layout by default) and image / map folders or tarballs.

  MP-16: name='mp16', split='train', missing_seg='skip'. Benchmarks: split='test', missing_seg='error' (a missing
  map stops the build) unless `segmenter_dir` is given (then missing maps are computed). YFCC4k: pass `columns`
  for its CSV (id/lat/lon headers).
  """
  columns = {**PLACES365_COLUMNS, **(columns or {})}
  if not os.path.isfile(csv_path):
    raise errors.BuildError(f"metadata CSV not found: {csv_path}")
  if segmenter_dir and missing_seg == "error":
    missing_seg = "segment"
  opts = _options(name, split, output_dir, partition_paths, segmenter_dir, **options)
  staging = opts.output_dir / build.STAGING
  staging.mkdir(parents=True, exist_ok=True)
  rgb_store, seg_store = _stores(images, segmentations, staging)
  rows, bad_rows = read_table(csv_path, columns)
  items, skipped = plan_items(rows, csv_path, rgb_store, seg_store, seg_name=seg_name, missing_seg=missing_seg)
  return build.write_dataset(items, rgb_store, seg_store, bad_rows + skipped, opts)


def build_mp16(*, csv_path, images, segmentations, output_dir, **kw) -> dict:
  """MP-16 from mp16_places365.csv + the RGB and colourised-map tarballs (or folders); missing maps are skipped,
  or computed when `segmenter_dir` is given."""
  kw.setdefault("missing_seg", "segment" if kw.get("segmenter_dir") else "skip")
  return build_from_csv(name="mp16", split="train", csv_path=csv_path, images=images,
                        segmentations=segmentations, output_dir=output_dir, **kw)


def build_benchmark(*, name: str, images, output_dir, csv_path=None, **kw) -> dict:
  """im2gps / im2gps3k / yfcc26k (CSV from the shared benchmarks folder by default) or yfcc4k (csv_path needed)."""
  if csv_path is None:
    if name not in registry.BENCHMARK_CSVS:
      raise errors.BuildError(f"{name}: pass its metadata CSV (known defaults: {sorted(registry.BENCHMARK_CSVS)})")
    csv_path = paths.shared_data_dir() / "benchmarks" / registry.BENCHMARK_CSVS[name]
  return build_from_csv(name=name, split="test", csv_path=csv_path, images=images, output_dir=output_dir, **kw)


def read_photo_csv(csv_path, columns=("path", "lat", "lon")) -> tuple[dict[str, tuple[int, str, str]], list[dict]]:
  """{relative path: (row, lat, lon)} from a CSV with a header naming `columns`; plus refused rows."""
  rows, bad = read_table(csv_path, dict(id=columns[0], lat=columns[1], lon=columns[2]))
  return {r["id"]: (r["row"], r["lat"], r["lon"]) for r in rows}, bad


def build_photos(*, input_dir, output_dir, csv_path=None, segmentations=None, seg_name: str = DEFAULT_SEG_NAME,
                 segmenter_dir: str | None = None, name: str = "photos", split: str = "test",
                 partition_paths: Sequence[str] | None = None, maps_oriented: bool = True,
                 segmentation_maps: bool = True, **options) -> dict:
  """Your own photos: every JPEG/PNG under `input_dir`, positioned by EXIF GPS or by `csv_path` (path,lat,lon,
  paths relative to `input_dir`; photos it does not list fall back to EXIF). Maps from `segmentations` (a
  folder/tarball named like the photos) or computed with `segmenter_dir`. `maps_oriented`: the given maps were
  computed on the EXIF-rotated photos, as `data_prep.segment` writes them (decides square photos).
  segmentation_maps=False (--no-seg): no maps at all; the records hold schema.NO_MAP and the set is marked as
  having none, for RGB-only models (model.fusion='none').
  """
  if not segmentation_maps and (segmentations or segmenter_dir):
    raise errors.BuildError("--no-seg builds a set without maps: leave out --seg and --segmenter, or drop --no-seg")
  if csv_path is not None and not os.path.isfile(csv_path):
    raise errors.BuildError(f"positions CSV not found: {csv_path}")
  opts = _options(name, split, output_dir, partition_paths, segmenter_dir, maps_oriented=maps_oriented,
                  segmentation_maps=segmentation_maps, **options)
  staging = opts.output_dir / build.STAGING
  staging.mkdir(parents=True, exist_ok=True)
  rgb_store, seg_store = _stores(input_dir, segmentations, staging)
  positions, skipped = ({}, []) if csv_path is None else read_photo_csv(csv_path)
  skipped += list(rgb_store.problems) + (list(seg_store.problems) if seg_store is not None else [])
  seg_index = None
  names = rgb_store.names()
  if seg_store is not None:
    seg_index = inputs.NameIndex(seg_store.names(), [seg_name_for(n, seg_name) for n in names[:20000]])
  items, no_seg, listed = [], [], set()
  for n in names:
    if not n.lower().endswith(PHOTO_SUFFIXES):
      skipped.append({"source": rgb_store.describe(n), "reason": "not a .jpg/.jpeg/.png file name"})
      continue
    latlon = None
    if n in positions:
      row, lat, lon = positions[n]
      listed.add(n)
      try:
        latlon = tuple(float(v) for v in images_lib.check_latlon(lat, lon, where=f"{csv_path}:row {row}"))
      except images_lib.BadInput as e:
        skipped.append({"source": rgb_store.describe(n), "reason": str(e)})
        continue
    seg = seg_index.lookup(seg_name_for(n, seg_name)) if seg_index is not None else None
    if seg is None:
      no_seg.append(n)
    items.append(build.Item(image_id=n, rgb_name=n, seg_name=seg, latlon=latlon))
  skipped += [{"source": f"{csv_path}:row {row}", "reason": f"photo {p!r} not found under {input_dir}"}
              for p, (row, _, _) in positions.items() if p not in listed]
  if no_seg and not segmenter_dir and segmentation_maps:
    raise errors.BuildError(
        f"{len(no_seg)} photos have no segmentation map (first: {no_seg[:5]}); pass --segmenter MODEL_DIR (an "
        "ADE20K SegFormer/UperNet folder) or --seg with maps named like the photos (or --no-seg: a set without "
        "maps, for RGB-only models, model.fusion='none')")
  items.sort(key=lambda it: it.image_id)
  return build.write_dataset(items, rgb_store, seg_store, skipped, opts)


def segment_folder(*, images, output_dir, model_dir, existing=None, seg_name: str = "{stem}.png",
               max_pixels: int | None = None, progress: bool = True) -> dict:
  """Writes a palette PNG map under `output_dir` for every photo in `images` (folder or tarball) that has none in
  `existing` (a folder/tarball of maps) or `output_dir`. Maps are computed on the EXIF-oriented photo at its
  dataset size (short side <= 320), which the builders accept as a rescaled map. Returns the report (also
  output_dir/report.json): {"written": N, "skipped": [{"source", "reason"}], "already_present": M}.
  """
  check_model_dir(model_dir)
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  staging = output_dir / "_staging"
  store = inputs.open_store(images, staging, "images", progress=progress)
  names = [n for n in store.names() if n.lower().endswith(PHOTO_SUFFIXES)]
  have = set()
  if existing:
    ex_store = inputs.open_store(existing, staging, "existing", progress=progress)
    index = inputs.NameIndex(ex_store.names(), [seg_name_for(n, seg_name) for n in names[:20000]])
    have = {n for n in names if index.lookup(seg_name_for(n, seg_name)) is not None}
  segmenter = None
  skipped = list(store.problems)
  written = present = 0
  root = output_dir.resolve()
  for n in tqdm(names, desc="segmenting", unit=" img", disable=not progress):
    target = output_dir / seg_name_for(n, seg_name)
    if n in have or target.is_file():
      present += 1
      continue
    reason = inputs.unsafe_name_reason(seg_name_for(n, seg_name))
    if reason is None and root not in target.resolve().parents:
      reason = "map path would leave the output folder"
    if reason:
      skipped.append({"source": store.describe(n), "reason": reason})
      continue
    try:
      kw = {} if max_pixels is None else {"max_pixels": max_pixels}
      decoded = images_lib.decode_image(store.read(n), **kw)
      _, _, rgb = images_lib.finish_image(decoded, transpose=True)
    except images_lib.BadInput as e:
      skipped.append({"source": store.describe(n), "reason": str(e)})
      continue
    if segmenter is None:
      segmenter = segmenter_lib.Segmenter(model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(segmenter_lib.encode_palette_png(segmenter(np.asarray(rgb))))
    os.replace(tmp, target)
    written += 1
  report = {"written": written, "already_present": present, "skipped": skipped}
  (output_dir / "report.json").write_text(json.dumps(report, indent=1))
  for spool in staging.glob("spool-*.sqlite"):
    spool.unlink()
  if staging.is_dir() and not any(staging.iterdir()):
    staging.rmdir()
  print(f"[segment] wrote {written} maps to {output_dir}; {present} already had one; skipped {len(skipped)} "
        f"(reasons in {output_dir / 'report.json'})")
  return report
