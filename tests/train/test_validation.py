"""Validation on another dataset than the training one (config.data.val), and the best checkpoint chosen by it."""
import io
import json

from PIL import Image
import numpy as np

from translocator_jax.data.build import builders
from translocator_jax.data.records import palette as palette_lib
from translocator_jax.runtime import checkpoints


def _benchmark_fixture(data_dir, shared_data, name, csv_name, n):
  """The first n rows of a benchmark's real CSV, with generated photos and colourised maps, built as `name`."""
  lines = (shared_data / "benchmarks" / csv_name).read_text().splitlines()
  src = data_dir / f"{name}_src"
  src.mkdir(parents=True, exist_ok=True)
  (src / "meta.csv").write_text("\n".join(lines[:n + 1]) + "\n")
  rng = np.random.default_rng(len(name))
  for line in lines[1:n + 1]:
    image_id = line.split(",")[0]
    for root, suffix, arr in (("rgb", ".jpg", rng.integers(0, 255, (24, 32, 3), np.uint8)),
                              ("seg", ".png", palette_lib.palette()[rng.integers(0, 150, (24, 32))])):
      path = src / root / (image_id[:-4] + suffix)
      path.parent.mkdir(parents=True, exist_ok=True)
      out = io.BytesIO()
      Image.fromarray(arr).save(out, "JPEG" if suffix == ".jpg" else "PNG")
      path.write_bytes(out.getvalue())
  report = builders.build_benchmark(name=name, csv_path=src / "meta.csv", images=src / "rgb",
                                    segmentations=src / "seg", output_dir=data_dir / name, progress=False,
                                    partition_paths=builders.default_partition_paths())
  assert report["written"] == n


def test_a_run_validates_on_another_dataset_and_keeps_the_best_checkpoint_by_it(run_train, tmp_path, shared_data):
  # Train on a few YFCC26k rows (MP-16's partitions, as the paper config), validate on a few Im2GPS rows.
  data_dir = tmp_path / "tfds"
  _benchmark_fixture(data_dir, shared_data, "yfcc26k", "yfcc25600_places365.csv", 16)
  _benchmark_fixture(data_dir, shared_data, "im2gps", "im2gps_places365.csv", 6)
  workdir = tmp_path / "w"
  summary, out = run_train(workdir, (
      "data.train='yfcc26k'", "data.train_split='test'", "data.val='im2gps'", f"data.data_dir='{data_dir}'",
      "model.heads={'coarse': 3298, 'middle': 7202, 'fine': 12893, 'scene': 3}", "model.num_seg_classes=150",
      "train.eval_every=4", "train.ckpt_every=4", "train.best_metric='val_geoscore'", "train.keep_checkpoints=1"))
  assert "validation: im2gps/test every 4 steps" in out
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  val = {r["step"]: r for r in records if "val_geoscore" in r}
  assert sorted(val) == [4, 8, 12], out[-2000:]
  scores = {s: val[s]["val_geoscore"] for s in val}
  best = checkpoints.best_step(workdir, [4, 8, 12])
  assert scores[best] == max(scores.values()), scores
  assert (workdir / "checkpoints" / str(best)).is_dir()   # kept although older checkpoints are pruned
