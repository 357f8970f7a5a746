"""--set overrides are strict: a typo, a value of the wrong type or out of its range is refused in one line, naming
the key (the schema itself: test_config_schema.py; the commands' own one-line refusals: test_cli_errors.py)."""
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
  assert config_io.read_config_file(f"{tmp_path / 'c.py'}:small") == {"arg": "small"}
  assert config_io.read_config_file(str(tmp_path / "c.py")) == {"arg": None}


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
def test_a_value_out_of_range_is_refused_naming_key_value_and_range(config, override, message):
  with pytest.raises(errors.ConfigError) as e:
    config_io.apply_overrides(config, [override])  # the type fits: the range is what is wrong
  assert str(e.value) == message


def test_a_key_of_the_schema_may_be_set_where_the_file_leaves_it_out():
  config = config_io.load_config("tests/train/synthetic_config.py")  # no momentum, end_lr_factor, mesh, ...
  config_io.apply_overrides(config, ["optim.end_lr_factor=0.01", "data.max_bad_records=0", "eval.refine=gallery",
                                     "data.synthetic.seed=3", "mesh.fsdp=2", "optim.clip_norm=None"])
  assert config.optim.end_lr_factor == 0.01 and config.data.max_bad_records == 0 and config.eval.refine == "gallery"
  assert config.data.synthetic.seed == 3 and config.mesh.fsdp == 2 and config.optim.clip_norm is None


def test_values_at_their_bounds_pass(config):
  config_io.apply_overrides(config, ["optim.learning_rate=1e-9", "optim.warmup_steps=0", "optim.weight_decay=0",
                                     "loss.label_smoothing=0.999", "model.dropout=0.0", "train.ckpt_every=0",
                                     "train.eval_every=0", "train.log_every=0", "optim.grad_accum_steps=1",
                                     "data.batch_size=1", "train.total_steps=1"])
  # A warm-up longer than the run is clamped by the schedule; None stands for the key's default.
  config_io.apply_overrides(config, ["optim.warmup_steps=1000", "loss.label_smoothing=None",
                                     "optim.grad_accum_steps=None", "train.log_every=None"])
  assert config.loss.label_smoothing == 0.0 and config.optim.grad_accum_steps == 1 and config.train.log_every == 100


def test_every_shipped_config_passes_the_checks():
  for spec in ("configs/earth_demo.py", "configs/earth_demo.py:tiny", "configs/translocator_b16_mp16.py",
               "configs/translocator_b16_mp16.py:runlocal", "configs/translocator_b16_mp16.py:authors",
               "configs/model_tiny.py", "tests/train/synthetic_config.py"):
    config_io.load_config(spec)
