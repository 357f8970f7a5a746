"""The Colab notebook runs top to bottom (quick variant, reusing the session's tiny Earth-demo run)."""
import json
import pathlib

import nbclient
import nbformat
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
  # The printed row is the run's own result: the table of its per-image predictions file.
  row = next(l for l in outputs.splitlines() if l.startswith("earth_patches test / TransLocator-JAX (f*)"))
  printed = [float(v) for v in row.split(")", 1)[1].split()[:5]]
  preds = predictions_io.read_predictions_csv(workdir / "predictions" / "earth_patches.csv")
  table = metrics.accuracy_table(preds.pred_latlon, preds.true_latlon)
  assert printed == pytest.approx([100 * table[k] for k in ACC_KEYS], abs=0.051)
  summary = json.loads((workdir / "demo" / "summary.json").read_text())
  assert summary["test_table"]["n"] == len(preds.image_ids) > 0
  assert "for half of such photos" in outputs           # the upload stand-in was predicted
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) == 6  # 3 prediction maps + errors + accuracy curve + the uploaded photo's map
  assert (workdir / "demo" / "uploaded_prediction.png").is_file()
