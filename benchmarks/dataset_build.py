"""Dataset build speed: images/s of the MP-16 builder on generated photos, against the bare codecs on the same
pairs in the same process, and the palette mapper against the exact nearest-colour search.

  .venv/bin/python benchmarks/dataset_build.py [--images 200] [--height 480] [--width 640] [--workers 1]

The bare codec pipeline, per pair, in this process: decode the JPEG (Pillow), resize to a 320-px short side
(bicubic), encode JPEG (quality 90); decode the PNG map, nearest resize to the same size, colour -> class by one
gather from an exact 24-bit table, encode PNG (level 3). `vs_bare_codec_{folder,tar}` = the builder's images/s a
worker / the bare pairs/s: the share of a worker's time that goes to its codecs. Prints one JSON object.
"""
import argparse
import io
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"))
import dataset_fixtures as fx  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.data.build import builders  # pylint: disable=wrong-import-position
from translocator_jax.data.records import palette as palette_lib  # pylint: disable=wrong-import-position


def exact_table() -> np.ndarray:
  """uint8 [2^24]: the class of every colour, from the mapper the builders use (checked against the exact search
  on the benchmark's map above)."""
  mapper = palette_lib.default_mapper()
  packed = np.arange(1 << 24, dtype=np.uint32)
  rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(np.uint8)
  return mapper(rgb.reshape(4096, 4096, 3)).reshape(-1)


def bare_pair(jpeg_bytes: bytes, png_bytes: bytes, table: np.ndarray) -> tuple[bytes, bytes]:
  img = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
  w, h = img.size
  scale = 320 / min(w, h)
  size = (round(w * scale), round(h * scale)) if scale < 1 else (w, h)
  out = io.BytesIO()
  img.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
  seg = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB").resize(size, Image.Resampling.NEAREST))
  classes = table[(seg[..., 0].astype(np.uint32) << 16) | (seg[..., 1].astype(np.uint32) << 8) | seg[..., 2]]
  out_seg = io.BytesIO()
  Image.fromarray(classes, "L").save(out_seg, "PNG", compress_level=3)
  return out.getvalue(), out_seg.getvalue()


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=200)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--workers", type=int, default=1)
  a = p.parse_args()
  result = {"images": a.images, "size": [a.height, a.width], "workers": a.workers}

  mapper = palette_lib.default_mapper()  # Also warms the builders' cached table.
  rgb = palette_lib.palette()[fx.class_map(320, 480, 0)].astype(np.int32)
  rgb = np.clip(rgb + np.random.default_rng(0).integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)
  t = time.perf_counter()
  for _ in range(5):
    fast = mapper(rgb)
  t_lut = (time.perf_counter() - t) / 5
  t = time.perf_counter()
  exact = palette_lib.nearest_class_exact(rgb)
  t_exact = time.perf_counter() - t
  assert np.array_equal(fast, exact)
  result.update(palette_map_ms_lut=1e3 * t_lut, palette_map_ms_exact=1e3 * t_exact,
                palette_speedup=t_exact / t_lut)

  with tempfile.TemporaryDirectory() as d:
    root = pathlib.Path(d)
    rgb_files, seg_files, rows = {}, {}, []
    for i in range(a.images):
      rel = f"{i % 7:02d}/{i:06d}.jpg"
      rgb_files[rel] = fx.jpeg(fx.photo(a.height, a.width, i))
      seg_files[rel[:-4] + ".png"] = fx.colourise(fx.class_map(a.height, a.width, i))
      rows.append([rel, "x", 10.0 + i * 1e-3, 20.0, 1, 2, 3, 0, 0, 0])
    fx.write_folder(root / "rgb", rgb_files)
    fx.write_folder(root / "seg", seg_files)
    fx.write_tar(root / "rgb.tgz", rgb_files, top="rgb")
    fx.write_tar(root / "seg.tgz", seg_files, top="seg")
    fx.write_csv(root / "m.csv", rows)
    table = exact_table()
    pairs = [(rgb_files[r], seg_files[r[:-4] + ".png"]) for r in sorted(rgb_files)]
    bare_pair(*pairs[0], table)
    t = time.perf_counter()
    for pair in pairs:
      bare_pair(*pair, table)
    result["bare_codec_pairs_per_s"] = a.images / (time.perf_counter() - t)
    for kind, images, segs in (("folder", root / "rgb", root / "seg"), ("tar", root / "rgb.tgz",
                                                                        root / "seg.tgz")):
      t = time.perf_counter()
      rep = builders.build_mp16(csv_path=root / "m.csv", images=images, segmentations=segs,
                                output_dir=root / f"out_{kind}", workers=a.workers, piece_size=50,
                                progress=False, partition_paths=builders.default_partition_paths())
      dt = time.perf_counter() - t
      assert rep["written"] == a.images, rep["skipped"][:3]
      result[f"{kind}_images_per_s"] = a.images / dt
      result[f"vs_bare_codec_{kind}"] = a.images / dt / a.workers / result["bare_codec_pairs_per_s"]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
