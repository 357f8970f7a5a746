"""Dataset build speed: images/s of the MP-16 builder on small generated photos, and the palette lookup table
against the exact nearest-colour search (same process, so the ratio is what to compare across machines).

  .venv/bin/python -m benchmarks.dataset_build [--images 200] [--height 480] [--width 640] [--workers 1]

Prints one JSON object.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"))
import dataset_fixtures as fx  # pylint: disable=g-import-not-at-top,wrong-import-position
from translocator_jax.data.build import builders  # pylint: disable=wrong-import-position
from translocator_jax.data.records import palette as palette_lib  # pylint: disable=wrong-import-position


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
    for kind, images, segs in (("folder", root / "rgb", root / "seg"), ("tar", root / "rgb.tgz",
                                                                        root / "seg.tgz")):
      t = time.perf_counter()
      rep = builders.build_mp16(csv_path=root / "m.csv", images=images, segmentations=segs,
                                output_dir=root / f"out_{kind}", workers=a.workers, piece_size=50,
                                progress=False, partition_paths=builders.default_partition_paths())
      dt = time.perf_counter() - t
      assert rep["written"] == a.images, rep["skipped"][:3]
      result[f"{kind}_images_per_s"] = a.images / dt
  print(json.dumps(result))


if __name__ == "__main__":
  main()
