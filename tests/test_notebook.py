"""The Colab notebook runs top to bottom (quick variant, reusing the session's tiny Earth-demo run)."""
import csv
import json
import pathlib

import nbclient
import nbformat
import numpy as np
import pytest

from translocator_jax.geo import metrics, predictions as predictions_io
from translocator_jax.geo.metrics import ACC_KEYS

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_notebook_runs_without_errors(earth_tiny_run, monkeypatch):
  workdir, data_dir = earth_tiny_run
  monkeypatch.setenv("TRANSLOCATOR_QUICK", "1")
  monkeypatch.setenv("TRANSLOCATOR_DEMO_WORKDIR", str(workdir))
  monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
  monkeypatch.delenv("TRANSLOCATOR_REAL_CHECKPOINT", raising=False)
  nb = nbformat.read(REPO / "colab" / "translocator_demo.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()  # raises CellExecutionError naming the cell on any error
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "=== done ===" in outputs                      # the demo ran to its end
  # The results cell prints the run's own rows: the tables of its per-image predictions file (f* and refined),
  # and the unseen-place rows.
  csv_path = workdir / "predictions" / "earth_patches.csv"
  preds = predictions_io.read_predictions_csv(csv_path)
  with open(csv_path, newline="") as f:
    refined = np.asarray([[float(r["pred_lat_refined"]), float(r["pred_lon_refined"])] for r in csv.DictReader(f)],
                         np.float32)
  results_cell = next(c for c in nb.cells if 'format_table(summary["table"])' in c.source)
  results_text = "".join(o.get("text", "") for o in results_cell.outputs)
  lines = results_text.splitlines()
  for prefix, latlon in [("earth_patches / TransLocator-JAX (fstar)", preds.pred_latlon),
                         ("earth_patches / + gallery refinement", refined)]:
    (row,) = [l for l in lines if l.startswith(prefix)]
    printed = [float(v) for v in row[len(prefix):].split()[:5]]
    table = metrics.accuracy_table(latlon, preds.true_latlon)
    assert printed == pytest.approx([100 * table[k] for k in ACC_KEYS], abs=0.051), prefix
  assert any(l.startswith("earth_patches / unseen places (>25 km), refined") for l in lines)
  summary = json.loads((workdir / "demo" / "summary.json").read_text())
  assert summary["test_table"]["n"] == len(preds.image_ids) > 0
  assert '"refined_acc_25km"' in results_text and '"unseen_n"' in results_text  # the evaluation's JSON record
  assert "for half of such photos" in outputs           # the upload stand-in was predicted
  assert "matching training photo train/" in outputs    # ... and refined with the gallery
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) == 6  # 3 prediction maps + errors + accuracy curve + the uploaded photo's map
  assert (workdir / "demo" / "uploaded_prediction.png").is_file()
