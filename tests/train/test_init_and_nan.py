"""Pretrained initialisation from config.init, and a run that blows up stops naming the step and checkpoint."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from translocator_jax import models
from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import config_io
from translocator_jax.train import loop
from translocator_jax.train import step as step_lib

SYNTHETIC = __file__.replace("test_init_and_nan.py", "synthetic_config.py")


def test_init_from_pretrained_vit_npz(tmp_path):
  config = config_io.load_config(SYNTHETIC)
  config.train.update(total_steps=1, ckpt_every=0, tensorboard=False)
  config.optim.lr_multipliers = {"weights": 0.0, "biases": 0.0}  # frozen: the saved params are the loaded ones
  # A "pretrained ViT": the RGB stream of a differently seeded model, in the big_vision npz layout.
  model = models.build_model(config.model)
  image, seg = step_lib.dummy_inputs(config.model)
  other = jax.device_get(model.init({"params": jax.random.key(7)}, image, seg)["params"])
  flat = traverse_util.flatten_dict(other["rgb"], sep="/")
  np.savez(tmp_path / "vit.npz", **{k: np.asarray(v) for k, v in flat.items()})
  config.init.pretrained = str(tmp_path / "vit.npz")
  loop.train(config, tmp_path / "w")
  params = checkpoints.load_for_inference(tmp_path / "w").params
  for stream in ("rgb", "seg"):  # both streams start from the checkpoint
    got = traverse_util.flatten_dict(params[stream], sep="/")
    for k, v in flat.items():
      np.testing.assert_array_equal(got[k], v, err_msg=f"{stream}/{k}")


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
  config = config_io.load_config(SYNTHETIC)
  config.optim.update(name="sgd", learning_rate=1e30, warmup_steps=0, clip_norm=0.0, weight_decay=0.0)
  config.train.update(total_steps=6, ckpt_every=1, tensorboard=False, log_every=1)
  with pytest.raises(loop.NonFiniteLossError) as err:
    loop.train(config, tmp_path)
  msg = str(err.value)
  assert "at step" in msg and "go back to checkpoint step" in msg, msg
  failed = int(msg.split("at step ")[1].split(":")[0])
  back = int(msg.split("go back to checkpoint step ")[1].split(" ")[0])
  assert 1 <= back < failed <= 6
  assert (tmp_path / "checkpoints" / str(back)).is_dir()
