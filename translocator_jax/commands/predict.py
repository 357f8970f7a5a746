"""Predict where photos were taken: `translocator-predict --checkpoint PATH photo.jpg|DIR ... [--top-k 5] [--json]`.

Folders are walked (JPEG and PNG files, sorted); `--csv OUT.csv` writes one row per photo (the top-k coordinates and
probabilities, the radii, place and country, the EXIF truth and error when known, the refined answer, the error
message of a photo that failed), a batch at a time, so memory stays bounded on 100k photos.

Every input is accounted for: each photo is placed or reported. A file that cannot be read or is not an image, a
folder that holds no photo, a folder named like a photo (`x.jpg/`) with none in it: one line each on stderr
(`PATH: error: WHY`), and a row with its `error` column filled in the CSV (with --json: its object's "error"). The
last line says `placed N of M photos (K failed)`.

Exit status:
  0  every photo was placed
  1  some failed (each named on stderr); the others were written
  2  none could be placed, or the arguments are wrong (one line `translocator-predict: error: ...`)

What each photo gets (top-k cells by f*, places, calibrated radii) and the Python API: infer/predictor.py.

The segmentation stream needs a map for each photo: a map file (`--seg`, a colourised ADE20K PNG or a PNG of
class indices), else the output of a transformers ADE20K segmenter (`--segmenter DIR`), else, for a model trained
without the segmentation stream (fusion='none'), nothing. A photo without a map is reported like any other
failure; the others go on.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import sys
from typing import Iterator, Sequence

import tqdm

from translocator_jax import errors
from translocator_jax.infer import refine as refine_lib
from translocator_jax.infer.prediction_csv import csv_header, csv_row
from translocator_jax.infer.predictor import Prediction, Predictor, failure_line, format_prediction
from translocator_jax.runtime import cli

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
_SUFFIX_LIST = ", ".join(PHOTO_SUFFIXES)


def _no_photo(folder: pathlib.Path, entries: Sequence[pathlib.Path]) -> Prediction:
  """The report of a folder that holds no photo, saying what it does hold."""
  files = sum(f.is_file() for f in entries)
  held = (f"{files} file{'s' * (files != 1)}, none of them {_SUFFIX_LIST}" if files
          else "nothing in it" if not entries else f"no file, only {len(entries)} folder{'s' * (len(entries) != 1)}")
  what = "a folder named like a photo, with no photo in it" if folder.suffix.lower() in PHOTO_SUFFIXES else (
      "no photo in this folder")
  return Prediction(str(folder), error=f"{folder}: {what} ({held})")


def iter_inputs(items: Sequence[str]) -> Iterator[str | Prediction]:
  """Every input named, in order: a photo's path (a file as given, or one found walking a folder, recursively, for
  JPEG and PNG files in sorted order; a missing or unreadable one becomes that photo's error when predicted), or a
  failed Prediction reporting a folder with no photo in it, or a folder met in a walk that is named like a photo
  and holds none. Nothing named is skipped without a word."""
  for item in items:
    path = pathlib.Path(item)
    if not path.is_dir():
      yield str(item)
      continue
    entries = sorted(path.rglob("*"))
    photos = [f for f in entries if f.suffix.lower() in PHOTO_SUFFIXES and not f.is_dir()]
    if not photos:
      yield _no_photo(path, entries)
      continue
    with_photos = {parent for f in photos for parent in f.parents}
    for f in entries:
      if f.suffix.lower() not in PHOTO_SUFFIXES:
        continue
      if not f.is_dir():
        yield str(f)  # a file, or a broken link or a pipe: predicted, or named with what is wrong
      elif f not in with_photos:  # a folder named like a photo, holding none: a person would miss it
        yield _no_photo(f, [e for e in entries if e.is_relative_to(f) and e != f])


def seg_map_for(photo: str, roots: Sequence[str], seg_dir: str) -> str:
  """The map of a photo found under one of the walked folders: SEG_DIR/<its path under that folder>.png (the
  published layout, a/b.jpg -> a/b.png); a photo named directly: SEG_DIR/<its stem>.png."""
  path = pathlib.Path(photo)
  for root in roots:
    root = pathlib.Path(root)
    if root.is_dir() and path.is_relative_to(root):
      return str(pathlib.Path(seg_dir) / path.relative_to(root).with_suffix(".png"))
  return str(pathlib.Path(seg_dir) / (path.stem + ".png"))


def parse_args(argv):
  p = argparse.ArgumentParser(prog="translocator-predict", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("photos", nargs="+", help="image files (JPEG, PNG, ...) or folders (walked for JPEG and PNG)")
  p.add_argument("--checkpoint", required=True, help="a training workdir or one checkpoint step directory")
  p.add_argument("--which", default="latest", choices=("latest", "best"))
  p.add_argument("--seg", nargs="+", default=None, help="segmentation maps, one per photo, in the same order")
  p.add_argument("--seg-dir", default=None, metavar="MAPS",
                 help="segmentation maps by path: MAPS/<photo's path under its folder>.png (a/b.jpg -> a/b.png)")
  p.add_argument("--csv", default=None, metavar="OUT.csv", help="write one row per photo here (streamed)")
  p.add_argument("--segmenter", default=None, help="a transformers ADE20K segmentation model folder")
  p.add_argument("--top-k", type=int, default=5)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--json", action="store_true", help="one JSON object per photo, a line each")
  p.add_argument("--map", default=None, help="draw each prediction (photo, zoomed map, candidates, confidence) "
                                             "into this PNG (several photos: PNG-<i>-<name>.png)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the training set (for its partitions)")
  p.add_argument("--refine", default=None, choices=refine_lib.REFINE_MODES,
                 help="'gallery': refine with the checkpoint's gallery (translocator-gallery; default: "
                      "config.eval.refine)")
  p.add_argument("--gallery", default=None, metavar="DIR", help="the gallery (default: WORKDIR/gallery)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_main, sys.argv[1:] if argv is None else argv, prog="translocator-predict", distributed=False)


def _main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  folders = [f for f in args.photos if pathlib.Path(f).is_dir()]
  if args.seg is not None and (folders or len(args.seg) != len(args.photos)):
    among = ", folders among them" * bool(folders)
    raise errors.UserError(f"--seg takes one map per photo ({len(args.photos)} photos{among}, {len(args.seg)} maps); "
                           "for folders use --seg-dir MAPS")
  if args.seg is not None and args.seg_dir:
    raise errors.UserError("give --seg or --seg-dir, not both")
  if args.seg_dir and not pathlib.Path(args.seg_dir).is_dir():
    raise errors.UserError(f"--seg-dir {args.seg_dir}: no such folder")
  predictor = Predictor.from_checkpoint(args.checkpoint, which=args.which, segmenter_dir=args.segmenter,
                                        data_dir=args.data_dir, refine=args.refine, gallery_dir=args.gallery)
  inputs = iter_inputs(args.photos)
  segs = iter(args.seg) if args.seg is not None else None
  refine = predictor.refiner is not None
  chunk = max(1, args.batch_size) * 16  # photos held at once (bounded memory on any number of photos)
  out_csv = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else None
  writer = csv.writer(out_csv) if out_csv else None
  if writer:
    writer.writerow(csv_header(args.top_k, refine))
  done = failed = 0
  try:
    with tqdm.tqdm(desc="predict", unit="photo", disable=not (args.csv or folders)) as bar:
      while True:
        batch = list(itertools.islice(inputs, chunk))
        if not batch:
          break
        paths = [b for b in batch if isinstance(b, str)]  # the others are reports already
        maps_of = ([next(segs) for _ in paths] if segs is not None
                   else [seg_map_for(b, folders, args.seg_dir) for b in paths] if args.seg_dir else None)
        predicted = iter(predictor.predict(paths, maps_of, top_k=args.top_k, batch_size=args.batch_size,
                                           keep_inputs=bool(args.map)) if paths else [])
        predictions = [next(predicted) if isinstance(b, str) else b for b in batch]
        for i, p in enumerate(predictions):
          if writer:
            writer.writerow(csv_row(p, args.top_k, refine))
          elif args.json:
            print(json.dumps(p.to_json()), flush=True)
          elif not p.error:
            print(format_prediction(p), flush=True)
          if p.error:
            bar.write(failure_line(p), file=sys.stderr)
          if args.map and not p.error:
            out = pathlib.Path(args.map)
            out = out if not folders and len(args.photos) == 1 else out.with_name(
                f"{out.stem}-{done + i}-{pathlib.Path(p.source).stem}{out.suffix or '.png'}")
            predictor.figure(p, out)
            print(f"map: {out}", file=sys.stderr)
        done += len(predictions)
        failed += sum(p.error is not None for p in predictions)
        bar.update(len(predictions))
  finally:
    if out_csv:
      out_csv.close()
  if args.csv:
    print(f"rows: {args.csv}", file=sys.stderr)
  placed = done - failed
  print(f"placed {placed} of {done} photos ({failed} failed)", file=sys.stderr)
  return 2 if not placed else 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
