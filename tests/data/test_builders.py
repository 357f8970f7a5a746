"""Builders on tiny files in the published layouts: every bad case reported once, every good image written,
unsafe archives refused, a killed build resumes to the same records, and reading needs no TensorFlow."""
import io
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

import dataset_fixtures as fx
from translocator_jax import errors
from translocator_jax.commands import build as cli
from translocator_jax.data.build import builders
from translocator_jax.data.build import images
from translocator_jax.data.build import verify
from translocator_jax.data.build import writer
from translocator_jax.data.records import manifest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _read_records(out_dir, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src = tfds.builder_from_directory(str(out_dir)).as_data_source(split)
  return [src[i] for i in range(len(src))]


def _check_report(report, bad, good, written_ids):
  assert report["written"] == len(good)
  assert set(written_ids) == good
  assert len(written_ids) == len(set(written_ids))
  sources = [s["source"] for s in report["skipped"]]
  for key, reason in bad.items():
    hits = [s for s in report["skipped"] if (key == "duplicate" and "duplicate image id" in s["reason"])
            or (key != "duplicate" and key in s["source"])]
    assert len(hits) == 1, (key, hits)
    if reason:
      assert reason in hits[0]["reason"], (key, hits[0])
  assert len(sources) == len(bad), sources  # Nothing else reported, nothing reported twice.


@pytest.fixture(scope="module")
def mp16_inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp16_in")
  rgb, seg, rows, good, bad = fx.mp16_case_files()
  fx.write_folder(root / "rgb", rgb)
  fx.write_folder(root / "seg", seg)
  fx.write_csv(root / "mp16_places365.csv", rows)
  # Tarballs as published: everything under one top folder, plus hostile members.
  hostile = {"../escape.jpg": fx.jpeg(fx.photo(8, 8, 0)), "/tmp/abs_escape.jpg": fx.jpeg(fx.photo(8, 8, 0))}
  fx.write_tar(root / "mp16_rgb_images.tgz", rgb, top="mp16_rgb_images", extra=hostile)
  fx.write_tar(root / "mp16_seg_images_PNG.tgz", seg, top="mp16_seg_images_PNG")
  return root, good, bad


@pytest.fixture(scope="module")
def folder_build(mp16_inputs, tmp_path_factory, shared_data):
  root, good, bad = mp16_inputs
  out = tmp_path_factory.mktemp("mp16_folder_out")
  report = builders.build_mp16(csv_path=root / "mp16_places365.csv", images=root / "rgb",
                               segmentations=root / "seg", output_dir=out, piece_size=4, progress=False,
                               partition_paths=builders.default_partition_paths())
  return out, report


def test_folder_build_reports_each_bad_file_once_and_writes_every_good_one(mp16_inputs, folder_build):
  _, good, bad = mp16_inputs
  out, report = folder_build
  assert json.loads((out / "report.json").read_text()) == report
  records = _read_records(out, "train")
  _check_report(report, bad, good, [r["image_id"].decode() for r in records])


def test_records_hold_converted_images_maps_labels_and_cells(mp16_inputs, folder_build, shared_data):
  out, _ = folder_build
  records = {r["image_id"].decode(): r for r in _read_records(out, "train")}
  for r in records.values():
    assert r["image"].dtype == np.uint8 and r["image"].shape[-1] == 3
    assert r["segmentation"].shape == r["image"].shape[:2] + (1,)
    assert min(r["image"].shape[:2]) <= 320
    assert r["segmentation"].max() < 150
  # Exact colourised map -> its class indices, pixel for pixel.
  small = records["aa/01/good_small.jpg"]
  np.testing.assert_array_equal(small["segmentation"][..., 0], fx.class_map(30, 40, 1))
  np.testing.assert_array_equal(records["bb/noisy_map.jpg"]["segmentation"][..., 0], fx.class_map(16, 16, 9))
  # Resized: short side 320, map resized with it (nearest: classes unchanged in block interiors).
  large = records["aa/01/good_large.jpg"]
  assert large["image"].shape[:2] == (320, 400)
  np.testing.assert_allclose(large["latlon"], [-33.9, 151.2], atol=1e-5)
  assert (large["scene_s3"], large["scene_s16"], large["scene_s365"]) == (2, 12, 300)
  # EXIF rotation applied (stored 24 wide x 20 high, viewed 20 x 24) since its map was made on the view.
  assert records["bb/rotated.jpg"]["image"].shape[:2] == (24, 20)
  # Greyscale / 16-bit: R = G = B; 16-bit values scaled (not clipped to white).
  for key in ("aa/02/grey.jpg", "bb/png16.jpg"):
    img = records[key]["image"].astype(int)
    assert np.abs(img[..., 0] - img[..., 1]).max() <= 3, key
  png16 = records["bb/png16.jpg"]["image"][..., 0].astype(int)
  expected16 = np.round((np.arange(20 * 24).reshape(20, 24) * 100) / 257.0)
  assert np.abs(png16 - expected16).mean() < 3
  # Alpha composited over white: 50% alpha lifts dark pixels towards white.
  alpha = records["bb/alpha.jpg"]["image"].astype(int)
  src = fx.photo(20, 24, 7).astype(int)
  assert np.abs(alpha - (src * 128 + 255 * 127) / 255).mean() < 4
  # Cells: the partitions' own assignment of the coordinates.
  from translocator_jax.geo import cells  # pylint: disable=g-import-not-at-top
  parts = [cells.load_partition_csv(p) for p in builders.default_partition_paths()]
  latlon = np.stack([r["latlon"] for r in records.values()])
  expected = np.stack([np.asarray(p.assign(latlon)) for p in parts], -1)
  np.testing.assert_array_equal(np.stack([r["cells"] for r in records.values()]), expected)


def test_tar_build_streams_refuses_unsafe_members_and_matches_folder_build(mp16_inputs, folder_build, tmp_path):
  root, good, bad = mp16_inputs
  folder_out, _ = folder_build
  out = tmp_path / "out"
  report = builders.build_mp16(csv_path=root / "mp16_places365.csv", images=root / "mp16_rgb_images.tgz",
                               segmentations=root / "mp16_seg_images_PNG.tgz", output_dir=out, piece_size=4,
                               progress=False, partition_paths=builders.default_partition_paths())
  unsafe = [s for s in report["skipped"] if "refused" in s["reason"]]
  assert sorted(s["source"].split(":", 1)[1] for s in unsafe) == ["../escape.jpg", "/tmp/abs_escape.jpg"]
  report["skipped"] = [s for s in report["skipped"] if s not in unsafe]
  records = _read_records(out, "train")
  _check_report(report, bad, good, [r["image_id"].decode() for r in records])
  assert not (root.parent / "escape.jpg").exists() and not pathlib.Path("/tmp/abs_escape.jpg").exists()
  assert not (out.parent / "escape.jpg").exists()
  assert not list(out.glob("_staging/spool-*"))  # Spools removed after the build.
  folder = {r["image_id"]: r for r in _read_records(folder_out, "train")}
  for r in records:
    f = folder[r["image_id"]]
    for key in ("image", "segmentation", "latlon", "cells", "scene_s365"):
      np.testing.assert_array_equal(r[key], f[key])


_READER = textwrap.dedent("""
    import json, sys
    class _HideTensorFlow:  # Makes TensorFlow look uninstalled: find_spec -> None, import -> ImportError.
      def __init__(self, finder): self._finder = finder
      def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
          return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None
    sys.meta_path[:] = [_HideTensorFlow(f) for f in sys.meta_path]
    try:
      import tensorflow
      raise SystemExit("tensorflow was importable")
    except ImportError:
      pass
    import tensorflow_datasets as tfds
    src = tfds.builder_from_directory(sys.argv[1]).as_data_source(sys.argv[2])
    out = [{"id": r["image_id"].decode(), "shape": list(r["image"].shape), "seg": int(r["segmentation"].sum()),
            "latlon": r["latlon"].tolist(), "cells": r["cells"].tolist()} for r in (src[i] for i in range(len(src)))]
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    print(json.dumps(out))
""")


def test_records_read_back_where_tensorflow_is_not_importable(folder_build):
  out, report = folder_build
  proc = subprocess.run([sys.executable, "-c", _READER, str(out), "train"], capture_output=True, text=True,
                        cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  here = _read_records(out, "train")
  assert len(got) == report["written"] == len(here)
  for g, h in zip(got, here):
    assert g["id"] == h["image_id"].decode()
    assert g["shape"] == list(h["image"].shape)
    assert g["seg"] == int(h["segmentation"].sum())
    assert g["cells"] == h["cells"].tolist()


_SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from translocator_jax.commands import build as cli
    from translocator_jax.data.build import writer as build
    write_piece = build._write_piece
    def slow(args):  # Slow pieces down so the test can kill the build between pieces.
      rep = write_piece(args)
      time.sleep(0.4)
      return rep
    build._write_piece = slow
    sys.exit(cli.mp16_main(sys.argv[1:]))
""")


def test_killed_build_resumes_to_the_records_of_an_uninterrupted_build(mp16_inputs, folder_build, tmp_path):
  root, _, _ = mp16_inputs
  folder_out, folder_report = folder_build
  out = tmp_path / "resumed"
  args = ["--csv", str(root / "mp16_places365.csv"), "--images", str(root / "mp16_rgb_images.tgz"),
          "--segmentations", str(root / "mp16_seg_images_PNG.tgz"), "--output", str(out), "--piece-size", "4",
          "--no-progress"]
  proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD] + args, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while (time.time() < deadline and proc.poll() is None
         and len(list(out.glob("mp16-train.array_record-*"))) < 2):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  complete = len(list(out.glob("mp16-train.array_record-*")))
  assert 2 <= complete < folder_report["pieces"], complete  # Killed part-way.
  assert not (out / "report.json").exists()
  assert cli.mp16_main(args) == 0  # The tarball path differs from the folder build; records must not.
  report = json.loads((out / "report.json").read_text())
  assert report["resumed_pieces"] >= complete
  assert report["written"] == folder_report["written"]
  resumed, reference = _read_records(out, "train"), _read_records(folder_out, "train")
  assert [r["image_id"] for r in resumed] == [r["image_id"] for r in reference]
  for a, b in zip(resumed, reference):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not list((out / "_staging").glob("*.tmp*"))


def test_the_same_inputs_give_byte_identical_shards_in_another_process(mp16_inputs, folder_build, tmp_path):
  # tf.Example features are serialized in sorted order: protobuf's own map order changes between processes.
  root, _, _ = mp16_inputs
  folder_out, _ = folder_build
  out = tmp_path / "again"
  args = ["--csv", str(root / "mp16_places365.csv"), "--images", str(root / "rgb"), "--segmentations",
          str(root / "seg"), "--output", str(out), "--piece-size", "4", "--no-progress"]
  env = {**os.environ, "PYTHONHASHSEED": "12345"}
  subprocess.run([sys.executable, "-m", "data_prep.build_mp16"] + args, cwd=REPO, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  shards = sorted(p.name for p in folder_out.glob("mp16-train.array_record-*"))
  assert shards and shards == sorted(p.name for p in out.glob("mp16-train.array_record-*"))
  for name in shards:
    assert (folder_out / name).read_bytes() == (out / name).read_bytes(), name


def test_a_build_writes_its_manifest_and_the_command_in_it_rewrites_a_damaged_shard(mp16_inputs, tmp_path):
  root, _, _ = mp16_inputs
  out = tmp_path / "built"
  args = [str(a) for a in ("--csv", root / "mp16_places365.csv", "--images", root / "rgb", "--segmentations",
                           root / "seg", "--output", out, "--piece-size", "4", "--no-progress")]
  assert cli.mp16_main(args) == 0
  m = json.loads((out / manifest.MANIFEST).read_text())
  assert m["rebuild"] == {"command": f"python -m data_prep.build_mp16 {shlex.join(args)}", "cwd": os.getcwd(),
                          "scope": "shard"}
  shards = manifest.split_shards(out)["train"]
  assert len(shards) > 2
  assert m["splits"]["train"] == [{"file": p.name, "bytes": p.stat().st_size, "records": n,
                                   "xxh3_64": manifest.checksum(p)} for p, n in shards]
  victim = shards[1][0]
  original = victim.read_bytes()
  os.truncate(victim, len(original) - 7)
  report = verify.verify(out, progress=False, workers=1)
  assert [r["file"] for r in report["bad"]] == [str(victim)]
  hint = report["bad"][0]["rebuild"]
  assert hint == (f"rebuild it: remove {victim} and rerun {m['rebuild']['command']} (from {os.getcwd()}) "
                  "(rewrites the missing shards only)")
  # Doing what it says gives back the very shard the build wrote.
  victim.unlink()
  assert cli.mp16_main(shlex.split(m["rebuild"]["command"])[3:]) == 0
  assert victim.read_bytes() == original
  assert not verify.verify(out, progress=False, workers=1)["bad"]
  assert json.loads((out / manifest.MANIFEST).read_text()) == m


def _benchmark_inputs(root, shared_data, n=4):
  rows = (shared_data / "benchmarks" / "im2gps_places365.csv").read_text().splitlines()
  header, body = rows[0], rows[1:n + 1]
  (root / "im2gps.csv").write_text("\n".join([header] + body) + "\n")
  ids = [r.split(",")[0] for r in body]
  rgb = {i: fx.jpeg(fx.photo(24, 32, k)) for k, i in enumerate(ids)}
  seg = {i[:-4] + ".png": fx.colourise(fx.class_map(24, 32, k)) for k, i in enumerate(ids)}
  fx.write_tar(root / "im2gps_rgb_images.tar.gz", rgb, top="im2gps")
  fx.write_tar(root / "im2gps_seg_images_PNG.tar.gz", {k: v for k, v in list(seg.items())[:-1]}, top="im2gps_seg")
  return ids


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
  import transformers  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("segformer")
  config = transformers.SegformerConfig(num_labels=150, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                        num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8)
  transformers.SegformerForSemanticSegmentation(config).save_pretrained(d)
  return d


def test_benchmark_missing_map_stops_unless_a_segmenter_is_given(tmp_path, shared_data, tiny_segmenter):
  ids = _benchmark_inputs(tmp_path, shared_data)
  args = ["--name", "im2gps", "--csv", str(tmp_path / "im2gps.csv"),
          "--images", str(tmp_path / "im2gps_rgb_images.tar.gz"),
          "--segmentations", str(tmp_path / "im2gps_seg_images_PNG.tar.gz"), "--no-progress", "--no-cells"]
  with pytest.raises(errors.BuildError, match="1 of 4 images have no segmentation map") as stopped:
    cli.benchmark_main(args + ["--output", str(tmp_path / "stopped")])  # one line, exit 2 under runtime.cli.run
  assert ids[-1] in str(stopped.value)
  assert not list((tmp_path / "stopped").glob("*.array_record-*"))
  assert cli.benchmark_main(args + ["--output", str(tmp_path / "out"), "--segmenter", str(tiny_segmenter)]) == 0
  records = {r["image_id"].decode(): r for r in _read_records(tmp_path / "out", "test")}
  assert sorted(records) == sorted(ids)
  np.testing.assert_array_equal(records[ids[0]]["segmentation"][..., 0], fx.class_map(24, 32, 0))
  seg = records[ids[-1]]["segmentation"]  # Computed by the segmenter.
  assert seg.shape == (24, 32, 1) and seg.max() < 150
  assert (records[ids[0]]["cells"] == -1).all()


def test_yfcc4k_ids_without_extension_and_configurable_columns(tmp_path):
  rgb = {f"{k}.jpg": fx.jpeg(fx.photo(16, 20, k)) for k in (101, 102)}
  seg = {f"{k}.png": fx.colourise(fx.class_map(16, 20, k)) for k in (101, 102)}
  fx.write_folder(tmp_path / "rgb", rgb)
  fx.write_folder(tmp_path / "seg", seg)
  fx.write_csv(tmp_path / "yfcc4k.csv", [[101, 10.0, 20.0], [102, -5.5, -70.25]], header=["id", "lat", "lon"])
  assert cli.benchmark_main(["--name", "yfcc4k", "--csv", str(tmp_path / "yfcc4k.csv"), "--id-column", "id",
                             "--lat-column", "lat", "--lon-column", "lon", "--images", str(tmp_path / "rgb"),
                             "--segmentations", str(tmp_path / "seg"), "--output", str(tmp_path / "out"),
                             "--no-progress", "--no-cells", "--workers", "2", "--piece-size", "1"]) == 0
  records = _read_records(tmp_path / "out", "test")  # Two pieces from two worker processes.
  assert [r["image_id"].decode() for r in records] == ["101", "102"]
  np.testing.assert_allclose(records[1]["latlon"], [-5.5, -70.25])
  assert records[0]["scene_s3"] == -1
  assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"] == []


def test_photos_from_exif_gps_or_csv_with_segmenter(tmp_path, tiny_segmenter):
  photos = tmp_path / "photos"
  files = {
      "trip/rotated_gps.jpg": fx.exif_gps(fx.photo(20, 30, 1), 48.8584, -2.2945, orientation=6),
      "trip/no_gps.jpg": fx.jpeg(fx.photo(20, 30, 2)),
      "trip/listed.png": fx.png(Image.fromarray(fx.photo(16, 16, 3))),
      "trip/bad_row.png": fx.png(Image.fromarray(fx.photo(16, 16, 4))),
      "notes.txt": b"not a photo",
  }
  fx.write_folder(photos, files)
  fx.write_csv(tmp_path / "pos.csv", [["trip/listed.png", -12.5, 130.0], ["trip/bad_row.png", 95.0, 0.0],
                                      ["trip/gone.jpg", 1.0, 1.0]], header=["path", "lat", "lon"])
  out = tmp_path / "out"
  assert cli.photos_main(["--input", str(photos), "--output", str(out), "--csv", str(tmp_path / "pos.csv"),
                          "--segmenter", str(tiny_segmenter), "--no-progress"]) == 0
  records = {r["image_id"].decode(): r for r in _read_records(out, "test")}
  assert sorted(records) == ["trip/listed.png", "trip/rotated_gps.jpg"]
  rot = records["trip/rotated_gps.jpg"]
  assert rot["image"].shape[:2] == (30, 20)  # Orientation 6 applied.
  assert rot["segmentation"].shape == (30, 20, 1)
  np.testing.assert_allclose(rot["latlon"], [48.8584, -2.2945], atol=1e-4)
  assert (rot["cells"] >= 0).all()  # A coordinate in France is in every MP-16 partition.
  np.testing.assert_allclose(records["trip/listed.png"]["latlon"], [-12.5, 130.0])
  report = json.loads((out / "report.json").read_text())
  reasons = {pathlib.Path(s["source"].split(":row")[0]).name if ":row" in s["source"] else
             pathlib.Path(s["source"]).name: s["reason"] for s in report["skipped"]}
  assert len(report["skipped"]) == 4, report["skipped"]
  assert "no EXIF GPS" in reasons["no_gps.jpg"]
  assert "out of range" in reasons["bad_row.png"]
  assert "not a .jpg" in reasons["notes.txt"]
  assert "not found" in reasons["pos.csv"]


def test_photos_without_maps_or_segmenter_stop_with_a_clear_message(tmp_path):
  fx.write_folder(tmp_path / "p", {"a.jpg": fx.exif_gps(fx.photo(8, 8, 1), 1.0, 2.0)})
  with pytest.raises(errors.BuildError, match="1 photos have no segmentation map.*--segmenter MODEL_DIR"):
    cli.photos_main(["--input", str(tmp_path / "p"), "--output", str(tmp_path / "o"), "--no-cells", "--no-progress"])
  assert not list((tmp_path / "o").glob("*.array_record-*"))


def test_segment_step_writes_maps_the_builder_reads(tmp_path, tiny_segmenter):
  fx.write_folder(tmp_path / "p", {"x/a.jpg": fx.exif_gps(fx.photo(20, 30, 1), 1.0, 2.0),
                                   "x/broken.jpg": b"\x00\x01"})
  assert cli.segment_main(["--images", str(tmp_path / "p"), "--output", str(tmp_path / "maps"),
                           "--model", str(tiny_segmenter), "--no-progress"]) == 0
  with Image.open(tmp_path / "maps" / "x" / "a.png") as m:
    assert m.mode == "P" and m.size == (30, 20)
    classes = np.asarray(m)
  report = json.loads((tmp_path / "maps" / "report.json").read_text())
  assert report["written"] == 1 and [s["source"].endswith("broken.jpg") for s in report["skipped"]] == [True]
  (tmp_path / "p" / "x" / "broken.jpg").unlink()  # It has no map, which would (rightly) stop the build.
  assert cli.photos_main(["--input", str(tmp_path / "p"), "--seg", str(tmp_path / "maps"), "--output",
                          str(tmp_path / "o"), "--no-cells", "--no-progress"]) == 0
  (rec,) = _read_records(tmp_path / "o", "test")
  np.testing.assert_array_equal(rec["segmentation"][..., 0], classes)  # Palette PNG read back exactly.


def test_square_rotated_photo_stays_aligned_with_the_map_the_segment_step_wrote(tmp_path, tiny_segmenter):
  """A square photo fits its map both as stored and rotated: the map's origin decides which view is written."""
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  data = fx.exif_gps(fx.photo(24, 24, 5), 1.0, 2.0, orientation=6)  # A left-to-right ramp as stored.
  fx.write_folder(tmp_path / "p", {"sq.jpg": data})
  assert cli.segment_main(["--images", str(tmp_path / "p"), "--output", str(tmp_path / "maps"),
                           "--model", str(tiny_segmenter), "--no-progress"]) == 0
  with Image.open(tmp_path / "maps" / "sq.png") as m:
    classes = np.asarray(m)
  with Image.open(io.BytesIO(data)) as im:
    stored = np.asarray(im.convert("RGB"), np.float32)
    oriented = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
  assert np.abs(stored - oriented).mean() > 10  # The two views really differ.
  for flag, expected in (([], oriented), (["--seg-on-stored-pixels"], stored)):
    out = tmp_path / f"o{len(flag)}"
    assert cli.photos_main(["--input", str(tmp_path / "p"), "--seg", str(tmp_path / "maps"), "--output", str(out),
                            "--no-cells", "--no-progress", *flag]) == 0
    (rec,) = _read_records(out, "test")
    np.testing.assert_array_equal(rec["segmentation"][..., 0], classes)
    assert np.abs(rec["image"].astype(np.float32) - expected).mean() < 3.0, flag


def test_mp16_skips_a_missing_map_and_computes_it_when_a_segmenter_is_given(tmp_path, shared_data, tiny_segmenter):
  ids = _benchmark_inputs(tmp_path, shared_data)  # Places365 layout; the last image has no map.
  common = dict(csv_path=tmp_path / "im2gps.csv", images=tmp_path / "im2gps_rgb_images.tar.gz",
                segmentations=tmp_path / "im2gps_seg_images_PNG.tar.gz", partition_paths=[], progress=False)
  report = builders.build_mp16(output_dir=tmp_path / "skip", **common)
  assert report["written"] == 3 and [ids[-1] in s["source"] for s in report["skipped"]] == [True]
  report = builders.build_mp16(output_dir=tmp_path / "seg", segmenter_dir=str(tiny_segmenter), **common)
  assert report["written"] == 4 and report["skipped"] == []
  assert sorted(r["image_id"].decode() for r in _read_records(tmp_path / "seg", "train")) == sorted(ids)


def test_partitions_from_a_built_dataset_read_its_coordinates(folder_build, tmp_path):
  out, report = folder_build
  latlon = np.stack([r["latlon"] for r in _read_records(out, "train")]).astype(np.float64)
  assert cli.partitions_main(["--input", str(out), "--output", str(tmp_path / "p"), "--tau-min", "0",
                              "--tau-max", "1000", "--no-progress"]) == 0
  part_report = json.loads((tmp_path / "p" / "partitions_report.json").read_text())
  assert part_report["coordinates"] == report["written"] == len(latlon)
  from translocator_jax.geo import cells  # pylint: disable=g-import-not-at-top
  part = cells.load_partition_csv(tmp_path / "p" / "cells_0_1000.csv")
  assert int(part.counts.sum()) == len(latlon)
  assert (np.asarray(part.assign(latlon.astype(np.float32))) >= 0).all()


def _yfcc26k_float32_casualties(shared_data):
  """(CSV rows, the authors' mapping): all 25,600 rows, and the mapping image id -> [coarse, middle, fine]."""
  rows, refused = builders.read_table(shared_data / "benchmarks" / "yfcc25600_places365.csv",
                                      {"id": "IMG_ID", "lat": "LAT", "lon": "LON"})
  assert not refused and len(rows) == 25600
  mapping = json.loads((shared_data / "benchmarks" / "yfcc25600_mapping_h3.json").read_text())
  return rows, mapping


def test_every_yfcc26k_row_gets_the_authors_cells(shared_data):
  rows, mapping = _yfcc26k_float32_casualties(shared_data)
  # What plan_items and the writer do: coordinates checked as read (float64), then cells assigned from them.
  latlon = np.stack([images.check_latlon(r["lat"], r["lon"]) for r in rows])
  assert latlon.dtype == np.float64
  got = writer.assign_cells(latlon, builders.default_partition_paths())
  want = np.array([mapping[r["id"]] for r in rows])
  np.testing.assert_array_equal(got, want)
  # float32 coordinates would move some across S2 cell edges: the case the issue names is one of them.
  rounded = writer.assign_cells(latlon.astype(np.float32), builders.default_partition_paths())
  moved = [r["id"] for r, a, b in zip(rows, rounded, want) if (a != b).any()]
  assert "d4/e2/2366789475.jpg" in moved


def test_a_yfcc26k_build_writes_the_authors_cells(shared_data, tmp_path):
  rows, mapping = _yfcc26k_float32_casualties(shared_data)
  latlon = np.array([[float(r["lat"]), float(r["lon"])] for r in rows])
  rounded = writer.assign_cells(latlon.astype(np.float32), builders.default_partition_paths())
  want = np.array([mapping[r["id"]] for r in rows])
  pick = [i for i in range(len(rows)) if (rounded[i] != want[i]).any()] + [0, 1, 2]  # float32's casualties too
  lines = (shared_data / "benchmarks" / "yfcc25600_places365.csv").read_text().splitlines()
  (tmp_path / "yfcc.csv").write_text("\n".join([lines[0]] + [lines[1 + i] for i in pick]) + "\n")
  ids = [rows[i]["id"] for i in pick]
  fx.write_folder(tmp_path / "rgb", {i: fx.jpeg(fx.photo(24, 32, k)) for k, i in enumerate(ids)})
  fx.write_folder(tmp_path / "seg", {i[:-4] + ".png": fx.colourise(fx.class_map(24, 32, k)) for k, i in enumerate(ids)})
  report = builders.build_benchmark(name="yfcc26k", csv_path=tmp_path / "yfcc.csv", images=tmp_path / "rgb",
                                    segmentations=tmp_path / "seg", output_dir=tmp_path / "out", progress=False,
                                    partition_paths=builders.default_partition_paths())
  assert report["written"] == len(pick)
  records = {(r["image_id"].decode() if isinstance(r["image_id"], bytes) else r["image_id"]): r
             for r in _read_records(tmp_path / "out", "test")}
  for i in pick:
    np.testing.assert_array_equal(records[rows[i]["id"]]["cells"], mapping[rows[i]["id"]], err_msg=rows[i]["id"])
    assert records[rows[i]["id"]]["latlon"].dtype == np.float32
