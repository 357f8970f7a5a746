"""Command lines of the dataset builders and of the shard check (the data_prep/ scripts are thin wrappers around
these `main`s).

Exit status: 0 when the dataset was written (skipped files are listed in report.json and counted on stderr),
2 when the build could not run (bad arguments, missing inputs, missing segmentation maps without a segmenter, an
output folder holding another build). A `main` raises what stops it (errors.BuildError, a missing file, a bad value);
the data_prep scripts run it under runtime.cli.run, the set-up of every command, which prints that as one line
`PROG: error: ...` and exits 2.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
from typing import Callable, Sequence

from translocator_jax.data.build import builders
from translocator_jax.data.build import partitions as partitions_build
from translocator_jax.data.build import verify
from translocator_jax.data.build import writer as build
from translocator_jax.data.records import manifest


MP16_PROG = "python -m data_prep.build_mp16"
BENCHMARK_PROG = "python -m data_prep.build_benchmark"
PHOTOS_PROG = "python -m data_prep.photos_to_dataset"
SEGMENT_PROG = "python -m data_prep.segment"
PARTITIONS_PROG = "python -m data_prep.build_partitions"
VERIFY_PROG = "python -m data_prep.verify"


def positive_int(text: str) -> int:
  """A whole number > 0 (argparse type): a bad count is a one-line usage error, not a failure mid-build."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value <= 0:
    raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
  return value


def _quality(text: str) -> int:
  value = positive_int(text)
  if value > 100:
    raise argparse.ArgumentTypeError(f"JPEG quality goes from 1 to 100, got {text!r}")
  return value


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--output", required=True, help="output folder (the TFDS data dir; created)")
  p.add_argument("--workers", type=positive_int, default=1,
                 help="parallel worker processes (one piece each at a time)")
  p.add_argument("--piece-size", type=positive_int, default=2000,
                 help="images per ArrayRecord shard (the resume unit)")
  p.add_argument("--partitions", nargs=3, metavar=("COARSE", "MIDDLE", "FINE"), default=None,
                 help="partition CSVs for the `cells` field (default: the MP-16 cells_50_* in the shared data)")
  p.add_argument("--no-cells", action="store_true", help="write cells = -1 (no partition files)")
  p.add_argument("--segmenter", default=None,
                 help="local transformers ADE20K model folder used for images without a segmentation map")
  p.add_argument("--seg-name", default=builders.DEFAULT_SEG_NAME,
                 help="map file name of an image id, a format over {id} {stem} {ext} (default: %(default)s, the "
                      "published layout: a/b.jpg -> a/b.png)")
  p.add_argument("--max-pixels", type=positive_int, default=build.images_lib.DEFAULT_MAX_PIXELS,
                 help="images with more pixels are skipped (decompression bombs)")
  p.add_argument("--jpeg-quality", type=_quality, default=build.images_lib.DEFAULT_JPEG_QUALITY)
  p.add_argument("--keep-spool", action="store_true", help="keep the tarball spools in _staging/ after the build")
  p.add_argument("--no-progress", action="store_true")


def _kwargs(a, prog: str, argv: Sequence[str] | None) -> dict:
  # The command line goes into the shard manifest: rerunning it rewrites a shard that verify found damaged.
  command = " ".join([prog, shlex.join(sys.argv[1:] if argv is None else list(argv))])
  return dict(output_dir=a.output, workers=a.workers, piece_size=a.piece_size,
              partition_paths=[] if a.no_cells else a.partitions, segmenter_dir=a.segmenter,
              seg_name=a.seg_name, max_pixels=a.max_pixels, jpeg_quality=a.jpeg_quality, keep_spool=a.keep_spool,
              progress=not a.no_progress, command=command)


def _run(fn: Callable[[], dict]) -> int:
  report = fn()
  print(f"written: {report['written']}  skipped: {len(report['skipped'])}")
  return 0


def mp16_main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=MP16_PROG, description="Build MP-16 (split train) from the published layout.")
  p.add_argument("--csv", required=True, help="mp16_places365.csv")
  p.add_argument("--images", required=True, help="mp16_rgb_images.tgz or its folder")
  p.add_argument("--segmentations", required=True, help="mp16_seg_images_PNG.tgz or its folder")
  _common(p)
  a = p.parse_args(argv)
  return _run(lambda: builders.build_mp16(csv_path=a.csv, images=a.images, segmentations=a.segmentations,
                                          **_kwargs(a, MP16_PROG, argv)))


def benchmark_main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=BENCHMARK_PROG, description="Build a benchmark test set (split test).")
  p.add_argument("--name", required=True, help="im2gps, im2gps3k, yfcc26k, yfcc4k (or any name with --csv)")
  p.add_argument("--csv", default=None, help="metadata CSV (default for im2gps/im2gps3k/yfcc26k: shared data)")
  p.add_argument("--images", required=True, help="RGB tarball or folder")
  p.add_argument("--segmentations", default=None, help="segmentation-map tarball or folder")
  p.add_argument("--id-column", default="IMG_ID")
  p.add_argument("--lat-column", default="LAT")
  p.add_argument("--lon-column", default="LON")
  _common(p)
  a = p.parse_args(argv)
  columns = dict(id=a.id_column, lat=a.lat_column, lon=a.lon_column)
  return _run(lambda: builders.build_benchmark(name=a.name, csv_path=a.csv, images=a.images,
                                               segmentations=a.segmentations, columns=columns,
                                               **_kwargs(a, BENCHMARK_PROG, argv)))


def photos_main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=PHOTOS_PROG,
                              description="Build a dataset of your own photos (positions from EXIF GPS or --csv).")
  p.add_argument("--input", required=True, help="folder tree (or tarball) of JPEG/PNG photos")
  p.add_argument("--csv", default=None, help="CSV with header path,lat,lon (paths relative to --input)")
  p.add_argument("--seg", default=None, help="folder/tarball of segmentation maps named like the photos")
  p.add_argument("--seg-on-stored-pixels", action="store_true",
                 help="the --seg maps were computed on the photos as stored, before EXIF rotation (default: on the "
                      "rotated photos, as data_prep.segment writes them); decides only square or flipped photos")
  p.add_argument("--no-seg", action="store_true",
                 help="build without segmentation maps (records hold none; the set is marked so): for RGB-only "
                      "models (model.fusion='none'); two-stream models refuse such a set")
  p.add_argument("--name", default="photos")
  p.add_argument("--split", default="test")
  _common(p)
  a = p.parse_args(argv)
  kw = _kwargs(a, PHOTOS_PROG, argv)
  return _run(lambda: builders.build_photos(input_dir=a.input, csv_path=a.csv, segmentations=a.seg,
                                            maps_oriented=not a.seg_on_stored_pixels, name=a.name,
                                            split=a.split, segmentation_maps=not a.no_seg, **kw))


def segment_main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=SEGMENT_PROG,
                              description="Write ADE20K-150 maps (palette PNGs) for photos that have none.")
  p.add_argument("--images", required=True, help="folder or tarball of photos")
  p.add_argument("--output", required=True, help="folder for the maps (same relative names, .png)")
  p.add_argument("--model", required=True, help="local transformers ADE20K segmentation model folder")
  p.add_argument("--existing", default=None, help="folder/tarball of maps already made (those are not redone)")
  p.add_argument("--seg-name", default=builders.DEFAULT_SEG_NAME)
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  return _run(lambda: builders.segment_folder(images=a.images, output_dir=a.output, model_dir=a.model,
                                           existing=a.existing, seg_name=a.seg_name, progress=not a.no_progress))


def partitions_main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=PARTITIONS_PROG,
                              description="Build the S2 partitions (GeoEstimation CSV layout) from training "
                                          "coordinates: a CSV with LAT/LON columns or a built dataset folder.")
  p.add_argument("--input", required=True, help="mp16_places365.csv, or a built TFDS dataset dir (.../1.0.0)")
  p.add_argument("--split", default="train", help="the dataset split (dataset input)")
  p.add_argument("--output", "--out_dir", dest="output", required=True, help="folder for cells_*.csv")
  p.add_argument("--tau-min", "--tau_min", dest="tau_min", type=int, default=50)
  p.add_argument("--tau-max", "--tau_max", dest="tau_max", type=int, nargs="+",
                 default=list(partitions_build.DEFAULT_TAU_MAX))
  p.add_argument("--lat-column", default="LAT")
  p.add_argument("--lon-column", default="LON")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  report = partitions_build.build_partitions(
      a.input, a.output, split=a.split, tau_min=a.tau_min, tau_max=a.tau_max, lat_column=a.lat_column,
      lon_column=a.lon_column, progress=not a.no_progress)
  for part in report["partitions"]:
    print(f"{part['file']}: {part['classes']} classes, {part['assigned']} of {report['coordinates']} assigned")
  print(f"coordinates: {report['coordinates']}  skipped rows: {len(report['skipped'])}"
        + (f" (listed in {a.output}/partitions_report.json)" if report["skipped"] else ""))
  return 0


def verify_main(argv: Sequence[str] | None = None) -> int:
  """Every shard of the built datasets checked against its manifest (data.build.verify): exit status 0 when all
  are sound, 1 with the list of bad shards."""
  p = argparse.ArgumentParser(prog=VERIFY_PROG, description=verify.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True,
                 help="a TFDS data dir (every dataset under it), or one dataset folder")
  p.add_argument("--name", default=None, help="only the dataset(s) under DATA_DIR/NAME (e.g. mp16, im2gps3k)")
  p.add_argument("--full", action="store_true",
                 help="read every record of every shard (default: of the shards whose checksum differs, and of sets "
                      "without a manifest)")
  p.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: one per core)")
  p.add_argument("--write-manifest", action="store_true",
                 help=f"add {manifest.MANIFEST} to sets built before manifests, once all their records read back")
  p.add_argument("--json", default=None, metavar="FILE", help="also write the report (every shard) here")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  report = verify.verify(a.data_dir, a.name, workers=a.workers, progress=not a.no_progress, full=a.full)
  print(verify.summary(report))
  if a.write_manifest:
    for d in verify.write_missing_manifests(report):
      print(f"wrote {pathlib.Path(d) / manifest.MANIFEST}")
  if a.json:
    keep = {k: v for k, v in report.items() if k != "manifests"}
    pathlib.Path(a.json).write_text(json.dumps(keep, indent=1))
  return 1 if report["bad"] else 0
