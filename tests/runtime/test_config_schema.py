"""The config schema (runtime/config_schema.py): every key filled with its default, every value checked, one line
naming the key for each mistake; a completed config is what a checkpoint saves and restores."""
import json

import ml_collections
import pytest

from translocator_jax import errors
from translocator_jax.runtime import checkpoints, config_io, config_schema

EARTH_TINY = "configs/earth_demo.py:tiny"
# The keys every config gives, and nothing else.
MINIMAL = {"model": {"variant": "Ti/8", "image_size": 16, "heads": {"fine": 8, "scene": 3}},
           "data": {"train": "synthetic", "batch_size": 4},
           "optim": {"name": "adamw", "learning_rate": 1e-3},
           "train": {"total_steps": 2}}


def _minimal():
  return ml_collections.ConfigDict(json.loads(json.dumps(MINIMAL)))


def test_a_minimal_config_is_filled_with_every_default_and_completing_again_changes_nothing():
  config = config_schema.complete(_minimal())
  for key, spec in config_schema.SCHEMA.items():
    node = config
    for part in key.split("."):
      node = node[part]
    if spec.default is not config_schema.REQUIRED and key != "loss.weights":
      assert (node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node) == spec.default, key
  assert dict(config.loss.weights) == {"fine": 1.0, "scene": 1.0}  # a head without a weight weighs 1
  once = checkpoints.config_to_json(config)
  assert checkpoints.config_to_json(config_schema.complete(config)) == once


def test_none_stands_for_the_default_and_values_take_the_keys_types():
  config = _minimal()
  config.optim.weight_decay, config.train.log_every, config.optim.warmup_steps = 0, None, 3.0
  config.data.partition_files = ["a.csv", "b.csv", "c.csv"]
  config_schema.complete(config)
  assert isinstance(config.optim.weight_decay, float) and config.train.log_every == 100
  assert isinstance(config.optim.warmup_steps, int) and config.data.partition_files == ("a.csv", "b.csv", "c.csv")


def test_a_completed_config_round_trips_through_a_checkpoint_config_json(tmp_path):
  config = config_io.load_config(EARTH_TINY)
  path = checkpoints.write_config(tmp_path, config)
  restored = checkpoints.config_from_json(path.read_text())
  assert checkpoints.config_to_json(restored) == checkpoints.config_to_json(config)
  assert restored.eval.datasets == ("earth_patches",) and restored.model.heads == config.model.heads


def test_a_saved_config_lacking_keys_added_since_gets_their_defaults():
  saved = json.loads(checkpoints.config_to_json(config_io.load_config(EARTH_TINY)))
  del saved["mesh"], saved["data"]["max_bad_records"], saved["eval"]["refine"], saved["model"]["remat_policy"]
  restored = checkpoints.saved_config(saved)
  assert (restored.mesh.data, restored.mesh.fsdp) == (-1, 1) and restored.data.max_bad_records == 100
  assert restored.eval.refine == "none" and restored.model.remat_policy == "nothing_saveable"


def _set(config, key, value):
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  if leaf in node:
    del node[leaf]  # any type: as a config file could write it
  node[leaf] = value


@pytest.mark.parametrize("key,value,message", [
    ("model.depht", 3, "config model.depht=3: unknown key; did you mean model.depth?"),
    ("optim.learnig_rate", 0.1, "config optim.learnig_rate=0.1: unknown key; did you mean optim.learning_rate?"),
    ("modle", {"depth": 2}, "config modle: unknown key; did you mean model?"),
    ("nothing_like_it", 1, "config nothing_like_it=1: unknown key; the keys of a config: data, eval, init, loss, mesh, "
                           "model, optim, seed, train"),
    ("model.heads.scen", 3, "config model.heads.scen=3: unknown key; did you mean model.heads.scene?"),
    ("model.seg_input", "rgb", "config model.seg_input='rgb': must be one of 'palette', 'classes'"),
    ("eval.tta", "six_crop", "config eval.tta='six_crop': must be one of 'center', 'five_crop', 'ten_crop'"),
    ("optim.name", "adam", "config optim.name='adam': must be one of 'sgd', 'adamw'"),
    ("model.width", 0, "config model.width=0: must be a whole number > 0"),
    ("model.num_seg_classes", -3, "config model.num_seg_classes=-3: must be a whole number > 0"),
    ("train.keep_checkpoints", 0, "config train.keep_checkpoints=0: must be a whole number > 0"),
    ("eval.crop_fraction", 1.5, "config eval.crop_fraction=1.5: must be in (0, 1]"),
    ("model.heads.fine", -1, "config model.heads.fine=-1: must be a whole number >= 0"),
    ("optim.learning_rate", float("nan"), "config optim.learning_rate=nan: must be a finite number > 0"),
    ("train.tensorboard", 1, "config train.tensorboard=1: must be True or False"),
    ("optim.warmup_steps", 2.5, "config optim.warmup_steps=2.5: must be a whole number >= 0"),
    ("optim.weight_decay", "none", "config optim.weight_decay='none': must be >= 0"),
    ("data.train", None, "config data.train: missing (every config gives it): must be a string"),
    ("model.variant", "Q/99", "config model.variant='Q/99': must be a ViT variant: Ti, S, B, L, a slash and a patch "
                              "size (e.g. 'B/16')"),
    ("optim.decay_regex", "(kernel", "config optim.decay_regex='(kernel': must be a regular expression"),
    ("optim.lr_multipliers", {"weight": 0.2}, "config optim.lr_multipliers.weight=0.2: unknown key; did you mean "
                                              "optim.lr_multipliers.weights?"),
    ("data.partition_files", ("a.csv",), "config data.partition_files=('a.csv',): must be 3 partition CSV names"),
    ("mesh.data", 0, "config mesh.data=0: must be a whole number > 0, or -1 for the remaining devices"),
    ("mesh.model", 2, "config mesh.model=2: unknown key; the keys of mesh: data, fsdp"),
])
def test_a_mistake_is_one_line_naming_the_key_and_what_it_must_be(key, value, message):
  config = config_io.read_config_file(EARTH_TINY)
  _set(config, key, value)
  with pytest.raises(errors.ConfigError) as e:
    config_schema.complete(config)
  assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("values,message", [
    ({"mesh.data": -1, "mesh.fsdp": -1}, "config mesh.fsdp=-1: must be a size when mesh.data is -1"),
    ({"train.fsdp": True, "mesh.data": 2}, "config train.fsdp=True: must be False with mesh.data=2, mesh.fsdp=1 "
                                          "(train.fsdp=True is short for mesh.data=1, mesh.fsdp=-1)"),
    ({"optim.grad_accum_steps": 3}, "config optim.grad_accum_steps=3: must be a divisor of data.batch_size=16"),
])
def test_an_impossible_combination_is_refused_naming_the_keys(values, message):
  config = config_io.read_config_file(EARTH_TINY)
  for key, value in values.items():
    _set(config, key, value)
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_schema.complete(config)


def test_fsdp_goes_with_either_mesh_it_stands_for():
  for mesh in ({"data": -1, "fsdp": 1}, {"data": 1, "fsdp": -1}):
    config = config_io.read_config_file(EARTH_TINY)
    config.train.fsdp, config.mesh = True, ml_collections.ConfigDict(mesh)
    config_schema.complete(config)


def test_a_section_built_alone_is_completed_alone():
  model = config_schema.complete_section("model", {"variant": "B/16", "image_size": 224, "heads": {"fine": 10}})
  assert model.remat_policy == "nothing_saveable" and model.width is None and model.dtype == "float32"
  with pytest.raises(errors.ConfigError, match=r"config model.fusion='concat': must be one of 'cls_sum'"):
    config_schema.complete_section("model", {**MINIMAL["model"], "fusion": "concat"})
  optim = config_schema.complete_section("optim", {"name": "sgd", "learning_rate": 0.1})
  assert optim.momentum == 0.9 and optim.decay_regex == config_schema.DEFAULT_DECAY_REGEX and optim.clip_norm is None
