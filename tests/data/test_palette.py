"""The packaged ADE20K palette and the fast nearest-colour mapping."""
import csv

import numpy as np

from translocator_jax.data.records import palette as palette_lib


def test_packaged_palette_equals_shared_file(shared_data):
  with open(shared_data / "ade20k_150_palette.csv") as f:
    rows = list(csv.DictReader(f))
  colours, names = palette_lib.load_palette()
  assert [int(r["class_index"]) for r in rows] == list(range(150))
  np.testing.assert_array_equal(colours, [[int(r["r"]), int(r["g"]), int(r["b"])] for r in rows])
  assert list(names) == [r["name"] for r in rows]


def test_lookup_table_equals_exact_nearest_colour():
  mapper = palette_lib.default_mapper()
  rng = np.random.default_rng(0)
  colours = palette_lib.palette().astype(np.int32)
  # Uniform random colours, and palette colours disturbed as by JPEG (small offsets), in one image.
  random_rgb = rng.integers(0, 256, (200, 300, 3))
  near = colours[rng.integers(0, 150, (200, 300))] + rng.integers(-6, 7, (200, 300, 3))
  rgb = np.clip(np.concatenate([random_rgb, near]), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(mapper(rgb), palette_lib.nearest_class_exact(rgb))


def test_exact_palette_colours_map_to_their_class():
  mapper = palette_lib.default_mapper()
  rgb = palette_lib.palette()[None]
  got = mapper(rgb)[0]
  expected = np.arange(150)
  expected[48] = 6  # Skyscraper has road's colour in the CSAIL palette: a colourised map reads it as road.
  np.testing.assert_array_equal(got, expected)
