"""Tiny inputs in the published layouts (folder and tarball), with one file for every bad case the builders handle."""
from __future__ import annotations

import csv
import io
import pathlib
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image

from translocator_jax.data.records import palette as palette_lib

HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural",
          "Prob_urban"]


def jpeg(arr: np.ndarray, mode: str = "RGB", exif: Image.Exif | None = None) -> bytes:
  img = Image.fromarray(arr).convert(mode)
  out = io.BytesIO()
  img.save(out, "JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
  return out.getvalue()


def png(img: Image.Image) -> bytes:
  out = io.BytesIO()
  img.save(out, "PNG")
  return out.getvalue()


def photo(h: int, w: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 255, (1, 1, 3))
  ramp = np.linspace(0, 60, w)[None, :, None]
  return np.clip(base + ramp + np.zeros((h, w, 3)), 0, 255).astype(np.uint8)


def class_map(h: int, w: int, seed: int) -> np.ndarray:
  """Blocky class indices in 0..149 (skyscraper 48 left out: it shares road's colour)."""
  rng = np.random.default_rng(seed)
  classes = np.array([c for c in range(150) if c != 48])
  blocks = rng.choice(classes, (max(1, h // 4 + 1), max(1, w // 4 + 1)))
  return np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:h, :w].astype(np.uint8)


def colourise(classes: np.ndarray, noise: int = 0, seed: int = 0) -> bytes:
  rgb = palette_lib.palette()[classes].astype(np.int32)
  if noise:
    rgb += np.random.default_rng(seed).integers(-noise, noise + 1, rgb.shape)
  return png(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"))


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
  """A valid-looking PNG header claiming enormous dimensions (a few hundred bytes on disk)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  idat = zlib.compress(b"\x00" * (width + 1) * 2)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated(arr: np.ndarray) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 CW to view.
  return jpeg(arr, exif=exif)


def exif_gps(arr: np.ndarray, lat: float, lon: float, orientation: int = 1) -> bytes:
  def dms(v):
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = round(((v - d) * 60 - m) * 60 * 1000)
    return ((d, 1), (m, 1), (s, 1000))
  from PIL import TiffImagePlugin  # pylint: disable=g-import-not-at-top
  exif = Image.Exif()
  exif[0x0112] = orientation
  r = TiffImagePlugin.IFDRational
  gps = {1: "N" if lat >= 0 else "S", 2: tuple(r(a, b) for a, b in dms(lat)),
         3: "E" if lon >= 0 else "W", 4: tuple(r(a, b) for a, b in dms(lon))}
  exif[0x8825] = gps
  return jpeg(arr, exif=exif)


def mp16_case_files() -> tuple[dict, dict, list, set, dict]:
  """(rgb files {relpath: bytes}, seg files {relpath: bytes}, CSV rows, good ids, bad {key: expected reason})."""
  rgb, seg, rows, good, bad = {}, {}, [], set(), {}

  def add(rel, data, h, w, lat=45.0, lon=7.0, seg_data="auto", row=True, seed=0):
    rgb[rel] = data
    if seg_data == "auto":
      seg[rel[:-4] + ".png"] = colourise(class_map(h, w, seed))
    elif seg_data is not None:
      seg[rel[:-4] + ".png"] = seg_data
    if row:
      rows.append([rel, "a@N00", lat, lon, 2, 12, 300, 0.1, 0.2, 0.7])

  add("aa/01/good_small.jpg", jpeg(photo(30, 40, 1)), 30, 40, seed=1)
  add("aa/01/good_large.jpg", jpeg(photo(400, 500, 2)), 400, 500, lat=-33.9, lon=151.2, seed=2)
  add("aa/02/cmyk.jpg", jpeg(photo(20, 24, 3), "CMYK"), 20, 24, seed=3)
  add("aa/02/grey.jpg", jpeg(photo(20, 24, 4), "L"), 20, 24, seed=4)
  a16 = (np.arange(20 * 24).reshape(20, 24) * 100).astype(np.uint16)
  add("bb/png16.jpg", png(Image.fromarray(a16)), 20, 24, seed=5)
  add("bb/palette.jpg", png(Image.fromarray(photo(20, 24, 6)).convert("P")), 20, 24, seed=6)
  rgba = np.dstack([photo(20, 24, 7), np.full((20, 24), 128, np.uint8)])
  add("bb/alpha.jpg", png(Image.fromarray(rgba, "RGBA")), 20, 24, seed=7)
  # EXIF-rotated photo whose map was made on the rotated view (24x20 stored -> 20x24 viewed).
  add("bb/rotated.jpg", exif_rotated(photo(20, 24, 8)), 24, 20, seed=8)
  # A map that went through JPEG-like colour noise still maps to its classes.
  add("bb/noisy_map.jpg", jpeg(photo(16, 16, 9)), 16, 16, seed=9,
      seg_data=colourise(class_map(16, 16, 9), noise=3, seed=9))
  good |= {r[0] for r in rows}
  full = jpeg(photo(64, 64, 10))
  bad_files = {
      "cc/truncated.jpg": full[: len(full) // 2],
      "cc/corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
      "cc/empty.jpg": b"",
      "cc/text.jpg": b"this is not an image, just text with an image name\n",
      "cc/bomb.jpg": bomb_png(),
  }
  for rel, data in bad_files.items():
    add(rel, data, 8, 8)
    bad[rel] = None
  add("cc/wrong_seg.jpg", jpeg(photo(20, 24, 11)), 20, 24, seg_data=colourise(class_map(10, 30, 11)))
  bad["cc/wrong_seg.jpg"] = "does not match"
  add("cc/no_seg.jpg", jpeg(photo(20, 24, 12)), 20, 24, seg_data=None)
  bad["cc/no_seg.jpg"] = "no segmentation map"
  add("dd/nan.jpg", jpeg(photo(20, 24, 13)), 20, 24, lat="nan", lon=3.0)
  bad["dd/nan.jpg"] = "not finite"
  add("dd/range.jpg", jpeg(photo(20, 24, 14)), 20, 24, lat=12.0, lon=200.0)
  bad["dd/range.jpg"] = "out of range"
  add("dd/orphan.jpg", jpeg(photo(20, 24, 15)), 20, 24, row=False)
  bad["dd/orphan.jpg"] = "no metadata row"
  rows.append(["aa/01/good_small.jpg", "b@N00", 1.0, 2.0, 0, 0, 0, 0, 0, 0])  # Duplicate id: this row is refused.
  bad["duplicate"] = "duplicate image id"
  rows.append(["ee/missing.jpg", "c@N00", 1.0, 2.0, 0, 0, 0, 0, 0, 0])
  bad["ee/missing.jpg"] = "image file not found"
  return rgb, seg, rows, good, bad


def write_csv(path: pathlib.Path, rows, header=HEADER) -> pathlib.Path:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def write_folder(root: pathlib.Path, files: dict) -> pathlib.Path:
  for rel, data in files.items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
  return root


def write_tar(path: pathlib.Path, files: dict, top: str = "", extra: dict | None = None) -> pathlib.Path:
  """A gzipped tar of `files` under folder `top`; `extra` members are added with their names as given."""
  with tarfile.open(path, "w:gz") as tar:
    for rel, data in list(files.items()) + list((extra or {}).items()):
      name = f"{top}/{rel}" if top and rel in files else rel
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


UNDECODABLE = b"\xff\xd8\xff\xe0 this record's photo is not a JPEG"


def write_undecodable_records(dataset_dir: pathlib.Path, split: str, indices) -> list[tuple[str, int]]:
  """Rewrites the shards of `split` with the builder's writer (writer.serialize, the ArrayRecord options of every
  build), the records at `indices` holding UNDECODABLE as their photo; updates the manifest as a build would.
  Returns the (shard file, position in it) of each of them."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.build import writer  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.records import manifest, schema, sources  # pylint: disable=g-import-not-at-top

  src = sources.open_source(dataset_dir, split, decode=False)
  bad, start, entries = set(int(i) for i in indices), 0, []
  located = [src.locate(i) for i in sorted(bad)]
  for path, n in manifest.split_shards(dataset_dir)[split]:
    records = []
    for i in range(start, start + n):
      ex = src[i]
      records.append(writer.serialize({
          schema.IMAGE: UNDECODABLE if i in bad else ex[schema.IMAGE], schema.SEGMENTATION: ex[schema.SEGMENTATION],
          schema.LATLON: ex[schema.LATLON], schema.CELLS: ex[schema.CELLS], schema.IMAGE_ID: ex[schema.IMAGE_ID].decode(),
          **{k: int(ex[k]) for k in (schema.SCENE_S3, schema.SCENE_S16, schema.SCENE_S365)}}))
    out = array_record_module.ArrayRecordWriter(str(path) + ".new", "group_size:1")
    for r in records:
      out.write(r)
    out.close()
    pathlib.Path(str(path) + ".new").replace(path)
    entries.append(manifest.shard_entry(path, n))
    start += n
  old = manifest.read(dataset_dir)
  manifest.write(dataset_dir, {**old["splits"], split: entries}, command=old["rebuild"]["command"],
                 scope=old["rebuild"]["scope"])
  return located
