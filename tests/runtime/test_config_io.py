"""--set overrides are strict: a typo or a value of the wrong type is refused in one line, naming the key."""
import subprocess
import sys

import pytest

from translocator_jax.runtime import config_io

EARTH_TINY = "configs/earth_demo.py:tiny"


@pytest.fixture()
def config():
  return config_io.load_config(EARTH_TINY)


@pytest.mark.parametrize("override,message", [
    ("model.depht=3", "no key 'model.depht'; did you mean model.depth?"),
    ("train.total_step=1", "did you mean train.total_steps?"),
    ("modle.depth=2", "no key 'modle'; did you mean model?"),
    ("model.heads.scen=3", "did you mean model.heads.scene?"),
    ("nothing_like_it=1", "its sections: data, eval, init, loss, model, optim, seed, train"),
])
def test_an_unknown_key_is_refused_naming_the_closest(config, override, message):
  with pytest.raises(KeyError) as e:
    config_io.apply_overrides(config, [override])
  assert message in e.value.args[0]


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=abc", "expected int (the config has 16), got str"),
    ("model.dtype=3", "expected str"),
    ("train.tensorboard=1", "expected bool"),
    ("data.batch_size", "expected key=value"),
])
def test_a_value_of_the_wrong_type_is_refused(config, override, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_io.apply_overrides(config, [override])


def test_good_overrides_apply(config):
  config_io.apply_overrides(config, ["model.depth=2", "optim.learning_rate=1", "optim.momentum=0.8",
                                     "train.fsdp_min_size=0", "model.heads.scene=3", "data.data_dir='/x'"])
  assert config.model.depth == 2 and config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
  assert config.optim.momentum == 0.8 and config.train.fsdp_min_size == 0 and config.data.data_dir == "/x"


@pytest.mark.parametrize("args,message", [
    (["--config", EARTH_TINY, "--set", "model.depht=3"], "did you mean model.depth?"),
    (["--config", EARTH_TINY, "--set", "data.batch_size=abc"], "expected int"),
    (["--config", EARTH_TINY, "--set", "model.variant=Q/99"], "unknown ViT variant 'Q/99'"),
    (["--config", "configs/nope.py"], "config file configs/nope.py not found"),
])
def test_the_trainer_says_it_in_one_line_and_exits_2(args, message, tmp_path):
  out = subprocess.run([sys.executable, "-m", "translocator_jax.train.main", *args, "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=300)
  lines = [l for l in out.stderr.splitlines() if l.strip() and "WARNING" not in l]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("translocator-train: error:") and message in lines[0], lines
  assert not (tmp_path / "w" / "checkpoints").exists()
