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


def _tie_cases(colours: np.ndarray) -> np.ndarray:
  """Colours where two palette colours can be equally near: the midpoints of every pair (each rounding of
  each channel) and every colour within 2 of a palette colour."""
  c = colours.astype(np.int32)
  i, j = np.triu_indices(len(c), 1)
  mid2 = c[i] + c[j]                                  # twice the midpoint
  lo, hi = mid2 // 2, (mid2 + 1) // 2
  corners = [np.where(np.array(bits, bool)[None], hi, lo) for bits in np.ndindex(2, 2, 2)]
  offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
  around = (c[:, None, :] + offsets[None]).reshape(-1, 3)
  return np.clip(np.concatenate(corners + [around]), 0, 255).astype(np.uint8)


def test_full_table_equals_exact_search_on_a_proof_sized_sample():
  table = palette_lib.lookup_table()
  assert table.shape == (1 << 24,) and table.dtype == np.uint8
  colours = palette_lib.palette()
  rng = np.random.default_rng(1)
  sample = np.concatenate([rng.integers(0, 256, (1 << 20, 3)).astype(np.uint8), _tie_cases(colours)])
  np.testing.assert_array_equal(table[palette_lib.pack_rgb(sample)], palette_lib.nearest_class_exact(sample))
  # Every colour of a few whole 64^3 blocks, corners of the cube included.
  for r0, g0, b0 in [(0, 0, 0), (192, 192, 192), (96, 32, 160)]:
    block = np.stack(np.meshgrid(*(np.arange(v, v + 64) for v in (r0, g0, b0)), indexing="ij"), -1)
    block = block.reshape(-1, 3).astype(np.uint8)
    np.testing.assert_array_equal(table[palette_lib.pack_rgb(block)], palette_lib.nearest_class_exact(block))


def test_the_table_is_cached_per_palette(tmp_path, monkeypatch):
  monkeypatch.setenv("TRANSLOCATOR_CACHE", str(tmp_path))
  colours = palette_lib.palette()[:20]                  # another palette: another table, another cache file
  table = palette_lib.lookup_table(colours)
  files = list(tmp_path.glob("palette_table_*.npy"))
  assert len(files) == 1
  np.testing.assert_array_equal(np.load(files[0]), table)
  rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3)).astype(np.uint8)
  np.testing.assert_array_equal(palette_lib.PaletteMapper(colours)(rgb), palette_lib.nearest_class_exact(rgb, colours))
