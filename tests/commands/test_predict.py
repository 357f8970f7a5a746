"""Predictor and translocator-predict on a tiny Earth-demo model trained in the session."""
import csv
import json
import pathlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from translocator_jax.commands import predict
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema, sources
from translocator_jax.geo import confidence, distance
from translocator_jax.infer import inference, predictor as predictor_lib
from translocator_jax.runtime import sharding


@pytest.fixture(scope="module")
def predictor(earth_tiny_run):
  workdir, data_dir = earth_tiny_run
  return predictor_lib.Predictor.from_checkpoint(workdir, data_dir=data_dir)


@pytest.fixture(scope="module")
def test_records(predictor):
  info = registry.dataset_info(predictor.config, "earth_patches")
  src = sources.open_source(info.tfds_dir, "test")
  return info, [src[i] for i in range(7)]


def test_predictions_are_a_distribution_with_consistent_top_k(predictor, test_records):
  _, records = test_records
  image, seg = zip(*[predictor.preprocess(r[schema.IMAGE], r[schema.SEGMENTATION])[1:3] for r in records])
  probs = predictor.probabilities(np.stack(image), np.stack(seg))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
  preds = predictor.predict([r[schema.IMAGE] for r in records], [r[schema.SEGMENTATION] for r in records],
                            top_k=4, batch_size=3)
  for p, row in zip(preds, probs):
    assert p.error is None and [c.rank for c in p.candidates] == [1, 2, 3, 4]
    got = [c.probability for c in p.candidates]
    np.testing.assert_allclose(got, np.sort(row)[::-1][:4], rtol=1e-5)
    assert p.candidates[0].cell == int(np.argmax(row))
    np.testing.assert_allclose(p.candidates[0].latlon, predictor.cell_latlon[np.argmax(row)], atol=1e-4)
    # The radii are the calibrated mixture's quantiles around guess 1 (temperatures fitted on validation).
    assert p.calibrated and predictor.calibration.calibrated
    want = confidence.radii_km(row[None].astype(np.float32), np.asarray([p.candidates[0].latlon], np.float32),
                               predictor.calibration.points, predictor.calibration.temperatures)
    np.testing.assert_allclose([p.radius50_km, p.radius90_km], np.asarray(want)[0], atol=0.06)
    assert 0 < p.radius50_km <= p.radius90_km
    assert p.candidates[0].place and p.candidates[0].country


def test_batching_does_not_change_predictions(predictor, test_records):
  _, records = test_records
  args = ([r[schema.IMAGE] for r in records], [r[schema.SEGMENTATION] for r in records])
  one = predictor.predict(*args, top_k=2, batch_size=1)
  many = predictor.predict(*args, top_k=2, batch_size=4)
  for a, b in zip(one, many):
    assert [c.cell for c in a.candidates] == [c.cell for c in b.candidates]
    np.testing.assert_allclose([c.probability for c in a.candidates], [c.probability for c in b.candidates],
                               rtol=1e-4, atol=1e-7)


def test_predictor_agrees_with_the_evaluator(predictor, test_records):
  """Same preprocessing and f* as translocator-eval: the top-1 coordinates match image by image."""
  info, records = test_records
  batches = inference.predict_dataset(
      predictor.model, predictor.params,
      inputs.eval_batches(predictor.config, info, "test", 8)[0], mesh=sharding.make_mesh(),
      partitions=predictor.partitions, heads=predictor.config.model.heads, progress=False)
  preds = predictor.predict([r[schema.IMAGE] for r in records], [r[schema.SEGMENTATION] for r in records], top_k=1)
  got = np.array([p.candidates[0].latlon for p in preds], np.float32)
  assert batches.method == "fstar"
  np.testing.assert_allclose(got, batches.pred_latlon[:len(records)], atol=1e-4)


def test_evaluation_and_predictor_share_one_crop_and_finish_path(predictor, test_records):
  """The same photo reaches the model as the same uint8 crop, finished by the same forward, at the config's
  crop_fraction (a non-default one, so a path that ignored it would differ)."""
  info, records = test_records
  config = predictor.config.copy_and_resolve_references()
  config.eval.crop_fraction = 0.6
  cropped = predictor_lib.Predictor(config, predictor.params, predictor.partitions, predictor.palette)
  batch = next(iter(inputs.eval_batches(config, info, "test", 8)[0]))
  image, seg = (np.stack(x) for x in zip(*[cropped.preprocess(r[schema.IMAGE], r[schema.SEGMENTATION])[1:3]
                                           for r in records]))
  assert image.dtype == seg.dtype == np.uint8
  np.testing.assert_array_equal(image, batch["image"][:len(records)])
  np.testing.assert_array_equal(seg, batch["seg"][:len(records)])
  forward = inference.make_forward(cropped.model, info.palette)
  from_eval = forward(cropped.params, batch["image"], batch["seg"])
  from_predictor = forward(cropped.params, image, seg)
  for head, probs in from_eval.items():
    np.testing.assert_allclose(from_predictor[head], probs[:len(records)], rtol=1e-5, atol=1e-7, err_msg=head)
  np.testing.assert_allclose(cropped.probabilities(image, seg).sum(axis=1), 1.0, rtol=1e-6)
  default_crop = predictor.preprocess(records[0][schema.IMAGE], records[0][schema.SEGMENTATION])[1]
  assert not np.array_equal(default_crop, image[0])  # crop_fraction is honoured, not ignored


def test_cli_reports_bad_files_and_goes_on(earth_tiny_run, test_records, tmp_path, capsys):
  workdir, data_dir = earth_tiny_run
  _, records = test_records
  good = tmp_path / "patch.png"
  Image.fromarray(records[0][schema.IMAGE]).save(good)
  good_seg = tmp_path / "patch_seg.png"
  Image.fromarray(records[0][schema.SEGMENTATION][..., 0]).save(good_seg)
  bad = tmp_path / "bad.jpg"
  bad.write_text("this is not a JPEG")
  rc = predict.main(["--checkpoint", str(workdir), "--data-dir", str(data_dir), "--json", "--top-k", "3",
                     "--map", str(tmp_path / "map.png"), str(good), str(bad), "--seg", str(good_seg), str(good_seg)])
  out = capsys.readouterr()
  assert rc == 1  # some failed, the rest written
  lines = [json.loads(line) for line in out.out.splitlines()]
  assert [l["source"] for l in lines] == [str(good), str(bad)]
  assert len(lines[0]["candidates"]) == 3 and lines[0]["error"] is None
  assert "not a readable image" in lines[1]["error"] and not lines[1]["candidates"]
  err = out.err.splitlines()
  assert [l for l in err if ": error: " in l] == [f"{bad}: error: {lines[1]['error'][len(str(bad)) + 2:]}"]
  assert err[-1] == "placed 1 of 2 photos (1 failed)"
  maps_written = sorted(p.name for p in tmp_path.glob("map-*.png"))
  assert maps_written == ["map-0-patch.png"]  # none for the bad file
  assert Image.open(tmp_path / "map-0-patch.png").size == (1300, 600)  # the photo beside the zoomed map


def test_a_photo_without_a_map_gets_a_message_saying_how_to_get_one(predictor, test_records):
  _, records = test_records
  (p,) = predictor.predict([records[0][schema.IMAGE]])
  assert p.error and "--seg" in p.error and "--segmenter" in p.error and not p.candidates


def test_exif_gps_becomes_the_true_location(predictor, test_records, tmp_path):
  _, records = test_records
  exif = Image.Exif()
  gps = exif.get_ifd(0x8825)
  gps.update({1: "S", 2: (33.0, 52.0, 12.0), 3: "E", 4: (151.0, 12.0, 36.0)})
  path = tmp_path / "gps.jpg"
  Image.fromarray(records[1][schema.IMAGE]).save(path, exif=exif)
  (p,) = predictor.predict([str(path)], [records[1][schema.SEGMENTATION]])
  assert p.error is None
  np.testing.assert_allclose(p.true_latlon, (-(33 + 52 / 60 + 12 / 3600), 151 + 12 / 60 + 36 / 3600), atol=1e-4)


def test_figures_show_the_whole_oriented_photo_not_the_models_crop(predictor, test_records, tmp_path):
  _, records = test_records
  patch = records[2][schema.IMAGE]
  (p,) = predictor.predict([patch], [records[2][schema.SEGMENTATION]], keep_inputs=True)
  crop = predictor.preprocess(patch, records[2][schema.SEGMENTATION])[1]
  np.testing.assert_array_equal(p.photo, patch)  # the whole patch, where the model read its centre crop
  assert not np.array_equal(crop, patch)
  # A large photo stored sideways (EXIF orientation 6) is kept upright and shrunk to DISPLAY_PX on its long side.
  stored = np.broadcast_to(np.linspace(0, 255, 700).astype(np.uint8)[None, :, None], (300, 700, 3)).copy()
  exif = Image.Exif()
  exif[0x0112] = 6
  path = tmp_path / "sideways.jpg"
  Image.fromarray(stored).save(path, exif=exif, quality=95)
  (q,) = predictor.predict([str(path)], [np.zeros((700, 300), np.uint8)], keep_inputs=True)
  assert q.error is None and q.photo.shape == (predictor_lib.DISPLAY_PX, 219, 3)
  upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((219, predictor_lib.DISPLAY_PX),
                                                                           Image.Resampling.LANCZOS)
  np.testing.assert_array_equal(q.photo, np.asarray(upright))
  assert q.photo[0].mean() < 40 < 215 < q.photo[-1].mean()  # the ramp now runs top to bottom
  assert predictor.figure(q, tmp_path / "sideways.png").stat().st_size > 0
  (r,) = predictor.predict([str(path)], [np.zeros((700, 300), np.uint8)])
  assert r.photo is None  # kept only when asked for


def test_a_map_of_another_photo_or_a_failing_segmenter_is_that_photos_error_only(predictor, test_records, tmp_path):
  _, records = test_records
  paths = []
  for i in range(3):
    paths.append(tmp_path / f"p{i}.png")
    Image.fromarray(records[i][schema.IMAGE]).save(paths[-1])
  seg = records[0][schema.SEGMENTATION][..., 0]
  wrong = np.zeros((seg.shape[0] + 7, seg.shape[1] * 2), np.uint8)  # another photo's shape
  preds = predictor.predict([str(p) for p in paths], [seg, wrong, records[2][schema.SEGMENTATION]], top_k=2)
  assert [p.error is None for p in preds] == [True, False, True]
  assert "segmentation map size" in preds[1].error and str(paths[1]) in preds[1].error
  assert len(preds[0].candidates) == 2 and len(preds[2].candidates) == 2

  def broken_segmenter(pixels):
    raise RuntimeError("out of memory on the segmenter")
  predictor.segmenter = broken_segmenter
  try:
    (p,) = predictor.predict([str(paths[0])])
  finally:
    predictor.segmenter = None
  assert p.error and "out of memory on the segmenter" in p.error and not p.candidates


def test_folders_are_walked_into_one_csv_row_per_photo(earth_tiny_run, test_records, tmp_path, capsys):
  workdir, data_dir = earth_tiny_run
  _, records = test_records
  photos, maps_dir = tmp_path / "photos", tmp_path / "maps"
  names = ["a.png", "sub/b.png", "sub/deeper/c.jpg"]
  for name, r in zip(names, records):
    for root in (photos, maps_dir):
      (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(r[schema.IMAGE]).save(photos / name, format="PNG" if name.endswith("png") else "JPEG")
    Image.fromarray(r[schema.SEGMENTATION][..., 0]).save((maps_dir / name).with_suffix(".png"))
  (photos / "sub" / "broken.jpg").write_text("not a photo")
  (photos / "notes.txt").write_text("not a photo either, and not walked")
  out = tmp_path / "rows.csv"
  rc = predict.main(["--checkpoint", str(workdir), "--data-dir", str(data_dir), "--top-k", "2", "--batch-size", "2",
                     "--seg-dir", str(maps_dir), "--csv", str(out), str(photos)])
  assert rc == 1
  assert capsys.readouterr().err.splitlines()[-1] == "placed 3 of 4 photos (1 failed)"
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["path"] for r in rows] == [str(photos / n) for n in ("a.png", "sub/b.png", "sub/broken.jpg",
                                                                   "sub/deeper/c.jpg")]
  broken = rows[2]
  assert broken["error"] and broken["lat_1"] == "" and broken["radius50_km"] == ""
  # A row is the Predictor's own prediction of that photo with its map.
  want = predictor_lib.Predictor.from_checkpoint(workdir, data_dir=data_dir).predict(
      [str(photos / "sub/b.png")], [str(maps_dir / "sub/b.png")], top_k=2)[0]
  row = rows[1]
  assert row["error"] == "" and float(row["prob_1"]) == pytest.approx(want.candidates[0].probability, abs=1e-5)
  assert (float(row["lat_2"]), float(row["lon_2"])) == pytest.approx(want.candidates[1].latlon, abs=1e-4)
  assert float(row["radius90_km"]) == pytest.approx(want.radius90_km) and row["place"] == want.candidates[0].place


def test_seg_maps_must_match_photos_one_to_one(earth_tiny_run, tmp_path, capsys):
  workdir, data_dir = earth_tiny_run
  (tmp_path / "dir").mkdir()
  rc = predict.main(["--checkpoint", str(workdir), "--data-dir", str(data_dir), str(tmp_path / "dir"),
                     "--seg", str(tmp_path / "m.png")])
  err = capsys.readouterr().err
  assert rc == 2 and "for folders use --seg-dir" in err and "Traceback" not in err


def _photos_with_maps(records, folder, maps_dir, names):
  for name, r in zip(names, records):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(r[schema.IMAGE]).save(folder / name, format="PNG")
    (maps_dir / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(r[schema.SEGMENTATION][..., 0]).save((maps_dir / name).with_suffix(".png"))
  return [folder / n for n in names]


def _run_csv(workdir, data_dir, maps_dir, out, inputs):
  return predict.main(["--checkpoint", str(workdir), "--data-dir", str(data_dir), "--top-k", "2", "--batch-size", "2",
                       "--seg-dir", str(maps_dir), "--csv", str(out), *map(str, inputs)])


def _rows(out):
  with open(out, newline="") as f:
    header, *rows = list(csv.reader(f))
  return header, [dict(zip(header, r)) for r in rows]


def test_every_input_is_placed_or_named_in_stderr_and_the_csv(earth_tiny_run, test_records, tmp_path, capsys,
                                                              monkeypatch):
  workdir, data_dir = earth_tiny_run
  _, records = test_records
  maps_dir = tmp_path / "maps"
  folder_photos = _photos_with_maps(records, tmp_path / "photos", maps_dir, ["a.png", "b.png"])
  (direct,) = _photos_with_maps(records[2:], tmp_path, maps_dir, ["direct.png"])
  empty = tmp_path / "empty"
  empty.mkdir()
  like_photo = tmp_path / "x.jpg"
  like_photo.mkdir()
  text = tmp_path / "y.jpg"
  text.write_text("a text file named like a photo")
  missing = tmp_path / "gone.png"
  (unreadable,) = _photos_with_maps(records[3:], tmp_path, maps_dir, ["locked.png"])
  read_bytes = pathlib.Path.read_bytes

  def refuse_one(path):  # the tests run as root, where a chmod does not stop a read
    if path == unreadable:
      raise PermissionError(13, "Permission denied", str(path))
    return read_bytes(path)
  monkeypatch.setattr(pathlib.Path, "read_bytes", refuse_one)

  out = tmp_path / "rows.csv"
  inputs = [tmp_path / "photos", empty, like_photo, text, direct, missing, unreadable]
  rc = _run_csv(workdir, data_dir, maps_dir, out, inputs)
  err = capsys.readouterr().err.splitlines()
  assert rc == 1  # some failed, the others were written
  header, rows = _rows(out)
  assert header[0] == "path" and header[-1] == "error" and header == predict.csv_header(2, False)
  placed = [str(p) for p in folder_photos] + [str(direct)]
  bad = [str(empty), str(like_photo), str(text), str(missing), str(unreadable)]
  assert [r["path"] for r in rows] == placed[:2] + bad[:3] + [placed[2]] + bad[3:]  # in the order named
  by_path = {r["path"]: r for r in rows}
  for path in placed:
    assert by_path[path]["error"] == "" and by_path[path]["lat_1"] and by_path[path]["radius90_km"]
  reasons = {
      str(empty): "no photo in this folder (nothing in it)",
      str(like_photo): "a folder named like a photo, with no photo in it (nothing in it)",
      str(text): "not a readable image",
      str(missing): "image file not found",
      str(unreadable): "cannot read the image file (Permission denied)",
  }
  failures = [l for l in err if ": error: " in l]
  assert len(failures) == len(bad)  # one line each
  for path, reason in reasons.items():
    assert reason in by_path[path]["error"] and by_path[path]["lat_1"] == "" and by_path[path]["place"] == ""
    (line,) = [l for l in failures if l.startswith(f"{path}: error: ")]
    assert reason in line
  assert err[-1] == "placed 3 of 8 photos (5 failed)"


def test_nothing_placed_is_exit_status_2_with_every_input_named(earth_tiny_run, tmp_path, capsys):
  workdir, data_dir = earth_tiny_run
  (tmp_path / "maps").mkdir()
  empty, like_photo, text = tmp_path / "empty", tmp_path / "x.jpg", tmp_path / "y.jpg"
  empty.mkdir()
  like_photo.mkdir()
  text.write_text("not a photo")
  notes = tmp_path / "notes"
  (notes / "deeper").mkdir(parents=True)
  (notes / "readme.txt").write_text("a folder of no photos")
  out = tmp_path / "rows.csv"
  rc = _run_csv(workdir, data_dir, tmp_path / "maps", out, [empty, like_photo, text, notes])
  err = capsys.readouterr().err.splitlines()
  assert rc == 2
  assert [r["path"] for r in _rows(out)[1]] == [str(empty), str(like_photo), str(text), str(notes)]
  assert f"{notes}: error: no photo in this folder (1 file, none of them .jpg, .jpeg, .png)" in err
  assert sum(": error: " in l for l in err) == 4 and "Traceback" not in "\n".join(err)
  assert err[-1] == "placed 0 of 4 photos (4 failed)"


def test_all_placed_is_exit_status_0(earth_tiny_run, test_records, tmp_path, capsys):
  workdir, data_dir = earth_tiny_run
  _, records = test_records
  maps_dir = tmp_path / "maps"
  photos = _photos_with_maps(records, tmp_path / "photos", maps_dir, ["a.png", "sub/b.png"])
  rc = predict.main(["--checkpoint", str(workdir), "--data-dir", str(data_dir), "--top-k", "2",
                     "--seg-dir", str(maps_dir), str(tmp_path / "photos")])
  out = capsys.readouterr()
  assert rc == 0
  assert [l.split(": within")[0] for l in out.out.splitlines() if ": within" in l] == [str(p) for p in photos]
  assert ": error: " not in out.err and out.err.splitlines()[-1] == "placed 2 of 2 photos (0 failed)"


def test_a_walk_names_folders_named_like_photos_that_hold_none(tmp_path):
  (tmp_path / "trip" / "day1").mkdir(parents=True)
  (tmp_path / "trip" / "day1" / "a.jpg").write_bytes(b"x")
  (tmp_path / "trip" / "b.JPG").write_bytes(b"x")
  (tmp_path / "trip" / "c.png" / "d.png").mkdir(parents=True)  # nested folders named like photos, none inside
  (tmp_path / "trip" / "e.jpeg").mkdir()
  (tmp_path / "trip" / "e.jpeg" / "f.jpg").write_bytes(b"x")  # named like a photo, holds one: walked
  (tmp_path / "trip" / "notes.txt").write_text("not walked")
  got = list(predict.iter_inputs([str(tmp_path / "trip")]))
  show = [g if isinstance(g, str) else f"REPORT {g.error}" for g in got]
  trip = tmp_path / "trip"
  assert show == [
      str(trip / "b.JPG"),
      f"REPORT {trip / 'c.png'}: a folder named like a photo, with no photo in it (no file, only 1 folder)",
      f"REPORT {trip / 'c.png' / 'd.png'}: a folder named like a photo, with no photo in it (nothing in it)",
      str(trip / "day1" / "a.jpg"),
      str(trip / "e.jpeg" / "f.jpg"),
  ]
  assert all(g.error and not g.candidates for g in got if not isinstance(g, str))


def test_help_documents_the_exit_statuses(capsys):
  with pytest.raises(SystemExit) as e:
    predict.parse_args(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "placed N of M photos (K failed)" in text
  for status in ("0  every photo was placed", "1  some failed", "2  none could be placed, or the arguments are wrong"):
    assert status in text
