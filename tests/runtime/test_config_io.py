"""--set overrides are strict: a typo or a value of the wrong type is refused in one line, naming the key (the
commands' own one-line refusals: test_cli_errors.py)."""
import pytest

from translocator_jax import errors
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
  with pytest.raises(errors.ConfigError) as e:
    config_io.apply_overrides(config, [override])
  assert message in str(e.value)


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=abc", "expected int (the config has 16), got str"),
    ("model.dtype=3", "expected str"),
    ("train.tensorboard=1", "expected bool"),
    ("data.batch_size", "expected key=value"),
])
def test_a_value_of_the_wrong_type_is_refused(config, override, message):
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_io.apply_overrides(config, [override])


def test_good_overrides_apply(config):
  config_io.apply_overrides(config, ["model.depth=2", "optim.learning_rate=1", "optim.momentum=0.8",
                                     "train.fsdp_min_size=0", "model.heads.scene=3", "data.data_dir='/x'"])
  assert config.model.depth == 2 and config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
  assert config.optim.momentum == 0.8 and config.train.fsdp_min_size == 0 and config.data.data_dir == "/x"


@pytest.mark.parametrize("text,spec,error,message", [
    ("def get_config(arg):\n  return arg\n", "{dir}", FileNotFoundError, "config file {dir} not found"),
    ("def get_config(arg)\n  return arg\n", "{file}", errors.ConfigError, "config file {file} is not valid Python"),
    ("CONFIG = 1\n", "{file}", errors.ConfigError, "config file {file} has no get_config(arg) function"),
    ("CONFIG_ARGS = ('small', 'big')\ndef get_config(arg):\n  return arg\n", "{file}:smal", errors.ConfigError,
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


@pytest.mark.parametrize("override,message", [
    ("optim.learning_rate=-0.1", "config optim.learning_rate=-0.1: must be > 0"),
    ("optim.learning_rate=0", "config optim.learning_rate=0.0: must be > 0"),
    ("train.total_steps=0", "config train.total_steps=0: must be a whole number > 0"),
    ("data.batch_size=-8", "config data.batch_size=-8: must be a whole number > 0"),
    ("optim.warmup_steps=-1", "config optim.warmup_steps=-1: must be a whole number >= 0"),
    ("optim.weight_decay=-0.01", "config optim.weight_decay=-0.01: must be >= 0"),
    ("loss.label_smoothing=1.0", "config loss.label_smoothing=1.0: must be in [0, 1)"),
    ("loss.label_smoothing=-0.1", "config loss.label_smoothing=-0.1: must be in [0, 1)"),
    ("model.dropout=1.5", "config model.dropout=1.5: must be in [0, 1)"),
    ("optim.grad_accum_steps=0", "config optim.grad_accum_steps=0: must be a whole number >= 1"),
    ("train.ckpt_every=-5", "config train.ckpt_every=-5: must be a whole number >= 0"),
    ("train.log_every=-1", "config train.log_every=-1: must be a whole number >= 0"),
    ("train.eval_every=-1", "config train.eval_every=-1: must be a whole number >= 0"),
])
def test_a_training_value_out_of_range_is_refused_naming_key_value_and_range(config, override, message):
  config_io.apply_overrides(config, [override])  # the type fits: the range is what is wrong
  with pytest.raises(errors.ConfigError) as e:
    config_io.check_training_values(config)
  assert str(e.value) == message


def test_a_training_value_a_config_leaves_out_is_checked_when_set(config):
  # A key the config does not spell out takes an override of any type (OPTIONAL_KEYS): its range still holds.
  del config.optim["warmup_steps"], config.optim["weight_decay"]
  for override, message in [("optim.warmup_steps=2.5", "config optim.warmup_steps=2.5: must be a whole number >= 0"),
                            ("optim.weight_decay='none'", "config optim.weight_decay='none': must be >= 0"),
                            ("optim.weight_decay=True", "config optim.weight_decay=True: must be >= 0")]:
    c = config_io.apply_overrides(config.copy_and_resolve_references(), [override])
    with pytest.raises(ValueError) as e:
      config_io.check_training_values(c)
    assert str(e.value) == message
  config.optim.learning_rate = float("inf")  # a config file can say so; --set cannot
  with pytest.raises(ValueError, match=r"optim.learning_rate=inf: must be a finite number > 0"):
    config_io.check_training_values(config)


def test_training_values_at_their_bounds_pass(config):
  config_io.apply_overrides(config, ["optim.learning_rate=1e-9", "optim.warmup_steps=0", "optim.weight_decay=0",
                                     "loss.label_smoothing=0.999", "model.dropout=0.0", "train.ckpt_every=0",
                                     "train.eval_every=0", "train.log_every=0", "optim.grad_accum_steps=1",
                                     "data.batch_size=1", "train.total_steps=1"])
  config_io.check_training_values(config)
  # A warm-up longer than the run is clamped by the schedule; None where the reader takes None as its default.
  config_io.apply_overrides(config, ["optim.warmup_steps=1000", "loss.label_smoothing=None",
                                     "optim.grad_accum_steps=None", "train.ckpt_every=None"])
  config_io.check_training_values(config)
  del config.loss["label_smoothing"], config.model["dropout"]  # left out: the reader's default, nothing to check
  config_io.check_training_values(config)


def test_every_shipped_config_passes_the_training_checks():
  for spec in ("configs/earth_demo.py", "configs/earth_demo.py:tiny", "configs/translocator_b16_mp16.py",
               "configs/translocator_b16_mp16.py:runlocal", "configs/translocator_b16_mp16.py:authors",
               "configs/model_tiny.py"):
    config_io.check_training_values(config_io.load_config(spec))
