"""--set overrides are strict: a typo or a value of the wrong type is refused in one line, naming the key (the
commands' own one-line refusals: test_cli_errors.py)."""
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
    ("nothing_like_it=1", "its sections: data, eval, init, loss, mesh, model, optim, seed, train"),
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


@pytest.mark.parametrize("text,spec,error,message", [
    ("def get_config(arg):\n  return arg\n", "{dir}", FileNotFoundError, "config file {dir} not found"),
    ("def get_config(arg)\n  return arg\n", "{file}", ValueError, "config file {file} is not valid Python"),
    ("CONFIG = 1\n", "{file}", ValueError, "config file {file} has no get_config(arg) function"),
    ("CONFIG_ARGS = ('small', 'big')\ndef get_config(arg):\n  return arg\n", "{file}:smal", ValueError,
     "{file} has no config 'smal'; did you mean {file}:small? it has: {file}, {file}:small, {file}:big"),
])
def test_a_bad_config_file_or_argument_is_refused_naming_it(tmp_path, text, spec, error, message):
  (tmp_path / "c.py").write_text(text)
  names = dict(dir=str(tmp_path), file=str(tmp_path / "c.py"))
  with pytest.raises(error) as e:
    config_io.load_config(spec.format(**names))
  assert message.format(**names) in str(e.value)


def test_listed_config_arguments_still_load(tmp_path):
  (tmp_path / "c.py").write_text("CONFIG_ARGS = ('small',)\ndef get_config(arg):\n  return {'arg': arg}\n")
  assert config_io.load_config(f"{tmp_path / 'c.py'}:small") == {"arg": "small"}
  assert config_io.load_config(str(tmp_path / "c.py")) == {"arg": None}
