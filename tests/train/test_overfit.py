"""A tiny TransLocator memorises a few dozen random examples: loss near zero, every training label right."""
import numpy as np

from translocator_jax import models
from translocator_jax.data.pipeline import synthetic
from translocator_jax.data.records import schema
from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import config_io
from translocator_jax.runtime import metrics_writer
from translocator_jax.train import loop


def test_tiny_model_overfits_few_examples(tmp_path):
  config = config_io.load_config(__file__.replace("test_overfit.py", "synthetic_config.py") + ":overfit")
  config.train.tensorboard = False
  summary = loop.train(config, tmp_path)
  assert summary["final_loss"] < 0.02, summary["losses"][-10:]
  assert summary["losses"][0] > 20 * summary["final_loss"]
  # Every training example's every labelled head is predicted right by the saved parameters.
  restored = checkpoints.load_for_inference(tmp_path)
  restored_config, params = restored.config, restored.params
  assert checkpoints.params_fingerprint(params) == summary["params_fingerprint"]
  model = models.build_model(restored_config.model)
  ex = synthetic.make_synthetic_examples(config, 24, 0)
  logits = model.apply({"params": params}, ex["image"], ex["seg"], train=False)
  for i, name in enumerate(schema.PARTITION_NAMES):
    np.testing.assert_array_equal(np.argmax(logits[name], -1), ex["cells"][:, i])
  known = ex["scene"] >= 0
  assert 0 < known.sum() < len(known)  # some scenes are unknown (-1) and ignored
  np.testing.assert_array_equal(np.argmax(logits["scene"], -1)[known], ex["scene"][known])
  # Progress went to the JSON-lines file, with a fingerprint at the (final) save.
  records = metrics_writer.read_metrics(tmp_path)
  assert [r["step"] for r in records if "loss" in r] == [50, 100, 150]
  assert records[-1]["params_fingerprint"] == summary["params_fingerprint"]
  assert all(np.isfinite(r["images_per_s"]) for r in records if "loss" in r)
