"""Every config key once: its default, its type and the values it may take. `complete(config)` fills and checks.

A config enters the library through complete(): config_io.load_config and apply_overrides for the commands,
checkpoints for a run's saved config.json (a key added since it was saved takes its default), and the entry points
that take a config built in Python (train.loop.train, the ahead-of-time builders, infer's Session and Predictor).
Every reader then reads `config.section.key` plainly: no default is written anywhere else.

A key left out, or given as None, takes its default (REQUIRED ones have none: every config gives them). A key the
schema does not know, a value of another type, out of its range or not one of its choices, and an impossible
combination of values are refused in one line naming the key (errors.ConfigError):
  config model.seg_input='rgb': must be one of 'palette', 'classes'
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any, Callable

import ml_collections

from translocator_jax import errors
from translocator_jax.data import registry
from translocator_jax.data.pipeline import augment, evaluation
from translocator_jax.data.records import schema as record_schema
from translocator_jax.models import layers as vit_layers
from translocator_jax.models import translocator, vit

REQUIRED = object()  # the default of a key every config must give
HEAD_NAMES = record_schema.PARTITION_NAMES + ("scene",)  # the heads the loss has labels for
REFINE_MODES = ("none", "gallery")  # config.eval.refine: infer/refine.py
LR_GROUPS = ("weights", "biases")  # config.optim.lr_multipliers: train/optimizer.py's parameter groups
DEFAULT_DECAY_REGEX = r"(^|/)kernel$"  # weight decay on kernels only


@dataclasses.dataclass(frozen=True)
class Allowed:
  """A number: above `low` (`low_open`: strictly), below `high` (strictly, unless `high_closed`), a whole number
  when `whole`."""
  low: float | None = None
  low_open: bool = False
  high: float | None = None
  high_closed: bool = False
  whole: bool = False

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      bound = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"
    elif self.low is not None:
      bound = f"{'>' if self.low_open else '>='} {self.low:g}"
    elif self.high is not None:
      bound = f"{'<=' if self.high_closed else '<'} {self.high:g}"
    else:
      return "a whole number" if self.whole else "a number"
    return f"a whole number {bound}" if self.whole else bound

  def allows(self, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return False
    if self.whole and value != int(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value <= self.high if self.high_closed else value < self.high)

  def check(self, key: str, value):
    if not self.allows(value):
      finite = isinstance(value, float) and not math.isfinite(value)
      refuse(key, value, f"a finite number {self.describe()}" if finite else self.describe())
    return int(value) if self.whole else float(value)


@dataclasses.dataclass(frozen=True)
class Rule:
  """A value that passes `test` (a bool, a string, ...); `says` is what it must be."""
  test: Callable[[Any], bool]
  says: str

  def describe(self) -> str:
    return self.says

  def check(self, key: str, value):
    if not self.test(value):
      refuse(key, value, self.says)
    return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class Table:
  """A mapping (model.heads, loss.weights, ...): its keys one of `names` (any when None), its values `values`."""
  names: tuple[str, ...] | None = None
  values: Allowed | None = None

  def describe(self) -> str:
    names = f" (name: one of {', '.join(self.names)})" if self.names else ""
    return f"a mapping {{name: {self.values.describe() if self.values else 'value'}}}{names}"

  def check(self, key: str, value):
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
      refuse(key, value, self.describe())
    items = {}
    for name, item in value.items():
      if self.names is not None and name not in self.names:
        raise unknown_key(f"{key}.{name}", item, [f"{key}.{n}" for n in self.names])
      items[name] = item if self.values is None else self.values.check(f"{key}.{name}", item)
    changed = any(items[name] is not item for name, item in value.items())
    return ml_collections.ConfigDict(items) if changed else value  # the schema's types, in the mapping's order


def one_of(*choices) -> Rule:
  return Rule(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(map(repr, choices))}")


def _is_regex(value) -> bool:
  try:
    return isinstance(value, str) and re.compile(value) is not None
  except re.error:
    return False


FLAG = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAMES = Rule(lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v), "a list of names")
WHOLE = Allowed(whole=True)
POSITIVE = Allowed(low=0, low_open=True)
POSITIVE_WHOLE = Allowed(low=0, low_open=True, whole=True)
COUNT = Allowed(low=0, whole=True)  # a whole number >= 0
SHARE = Allowed(low=0, high=1)  # in [0, 1)
VARIANT = Rule(lambda v: isinstance(v, str) and re.fullmatch(rf"({'|'.join(vit.VARIANTS)})/[1-9]\d*", v) is not None,
               f"a ViT variant: {', '.join(vit.VARIANTS)}, a slash and a patch size (e.g. 'B/16')")
MESH_AXIS = Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1),
                 "a whole number > 0, or -1 for the remaining devices")


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key: its default (REQUIRED: none) and the values it may take (Allowed, Rule or Table). A key whose
  default is None also takes None."""
  default: Any
  type: Allowed | Rule | Table


SCHEMA: dict[str, Key] = {
    "seed": Key(0, WHOLE),
    # The network (models/translocator.py). width, depth, mlp_dim, num_heads, patch_size: None = the variant's.
    "model.variant": Key(REQUIRED, VARIANT),
    "model.image_size": Key(REQUIRED, POSITIVE_WHOLE),
    "model.heads": Key(REQUIRED, Table(HEAD_NAMES, COUNT)),  # head -> classes; 0: the training set's partition
    "model.width": Key(None, POSITIVE_WHOLE),
    "model.depth": Key(None, POSITIVE_WHOLE),
    "model.mlp_dim": Key(None, POSITIVE_WHOLE),
    "model.num_heads": Key(None, POSITIVE_WHOLE),
    "model.patch_size": Key(None, POSITIVE_WHOLE),
    "model.fusion": Key("cls_sum", one_of(*translocator.FUSIONS)),
    "model.fusion_per_layer": Key(False, FLAG),
    "model.seg_input": Key("palette", one_of(*translocator.SEG_INPUTS)),
    "model.num_seg_classes": Key(150, POSITIVE_WHOLE),
    "model.seg_embed_dim": Key(16, POSITIVE_WHOLE),
    "model.dtype": Key("float32", one_of(*translocator.DTYPES)),
    "model.remat": Key(False, FLAG),
    "model.remat_policy": Key("nothing_saveable", one_of(*vit.REMAT_POLICIES)),
    "model.scan_layers": Key(False, FLAG),
    "model.attention": Key("auto", one_of(*vit_layers.ATTENTION_IMPLS)),
    "model.dropout": Key(0.0, SHARE),
    "model.ln_epsilon": Key(1e-6, POSITIVE),
    "model.gelu_approximate": Key(True, FLAG),
    "model.head_zeroinit": Key(True, FLAG),
    # Datasets and reading (data/registry.py, data/pipeline/).
    "data.train": Key(REQUIRED, TEXT),
    "data.batch_size": Key(REQUIRED, POSITIVE_WHOLE),  # the global batch
    "data.train_split": Key("train", TEXT),
    "data.val": Key(None, TEXT),  # 'dataset[:split]' to validate on
    "data.val_split": Key(None, TEXT),
    "data.data_dir": Key(None, TEXT),  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
    "data.partitions_dir": Key(None, TEXT),  # None: the shared data's partitions/
    "data.partition_files": Key(registry.MP16_PARTITION_FILES, Rule(
        lambda v: NAMES.test(v) and len(v) == 3, "3 partition CSV names [coarse, middle, fine]")),
    "data.augmentation": Key("crop", one_of(*augment.AUGMENTATIONS)),
    "data.worker_count": Key(0, COUNT),
    "data.shuffle_seed": Key(0, WHOLE),
    "data.max_bad_records": Key(100, COUNT),
    "data.earth_patches": Key({}, Table()),  # earth_patches.ensure_built's options, checked there
    "data.synthetic.num_examples": Key(32, POSITIVE_WHOLE),
    "data.synthetic.seed": Key(0, WHOLE),
    # The loss (train/loss.py): a head left out of weights weighs 1.
    "loss.weights": Key({}, Table(HEAD_NAMES, Allowed(low=0))),
    "loss.label_smoothing": Key(0.0, SHARE),
    "loss.haversine_tau_km": Key(0.0, Allowed(low=0)),  # > 0: haversine label smoothing
    # Optimizer and schedule (train/optimizer.py). The warm-up may exceed the run: the schedule clamps it.
    "optim.name": Key(REQUIRED, one_of("sgd", "adamw")),
    "optim.learning_rate": Key(REQUIRED, POSITIVE),
    "optim.warmup_steps": Key(0, COUNT),
    "optim.end_lr_factor": Key(0.0, Allowed(low=0)),
    "optim.weight_decay": Key(0.0, Allowed(low=0)),
    "optim.decay_regex": Key(DEFAULT_DECAY_REGEX, Rule(_is_regex, "a regular expression")),
    "optim.lr_multipliers": Key(None, Table(LR_GROUPS, Allowed(low=0))),
    "optim.clip_norm": Key(None, Allowed(low=0)),  # None or 0: no clipping
    "optim.grad_accum_steps": Key(1, Allowed(low=1, whole=True)),
    "optim.momentum": Key(0.9, Allowed(low=0)),  # sgd; 0: none
    "optim.nesterov": Key(False, FLAG),
    "optim.b1": Key(0.9, SHARE),  # adamw
    "optim.b2": Key(0.999, SHARE),
    "optim.eps": Key(1e-8, POSITIVE),
    # The loop (train/loop.py): the every-N-steps settings take 0 for never.
    "train.total_steps": Key(REQUIRED, POSITIVE_WHOLE),
    "train.log_every": Key(100, COUNT),
    "train.ckpt_every": Key(1000, COUNT),
    "train.eval_every": Key(0, COUNT),
    "train.keep_checkpoints": Key(3, POSITIVE_WHOLE),
    "train.best_metric": Key(None, TEXT),  # e.g. 'val_acc_750km': keep the best checkpoint on validation
    "train.best_mode": Key("max", one_of("max", "min")),
    "train.fsdp": Key(False, FLAG),  # True: short for mesh.data=1, mesh.fsdp=-1
    "train.fsdp_min_size": Key(2 ** 14, COUNT),  # arrays smaller than this stay replicated under FSDP
    "train.async_checkpoints": Key(True, FLAG),
    "train.tensorboard": Key(True, FLAG),
    "train.progress_bar": Key(True, FLAG),
    # The device mesh's axis sizes (runtime/sharding.py).
    "mesh.data": Key(-1, MESH_AXIS),
    "mesh.fsdp": Key(1, MESH_AXIS),
    # Evaluation (eval/, infer/).
    "eval.datasets": Key(registry.EVAL_DATASETS, NAMES),
    "eval.batch_size": Key(256, POSITIVE_WHOLE),
    "eval.tta": Key("center", one_of(*augment.TTA_MODES)),
    "eval.crop_fraction": Key(evaluation.EVAL_CROP_FRACTION, Allowed(low=0, low_open=True, high=1, high_closed=True)),
    "eval.refine": Key("none", one_of(*REFINE_MODES)),
    "eval.gallery": Key(None, Table()),  # the tuned refinement settings, checked by infer/refine.py
    "init.pretrained": Key(None, TEXT),  # ViT .npz or a HF ViT directory
}
SECTIONS = sorted({key.rsplit(".", i)[0] for key in SCHEMA for i in range(1, key.count(".") + 1)})


def default(key: str) -> Any:
  return SCHEMA[key].default


def refuse(key: str, value, must: str):
  raise errors.ConfigError(f"config {_named(key, value)}: must be {must}")


def _named(key: str, value) -> str:
  return key if isinstance(value, (dict, ml_collections.ConfigDict)) else f"{key}={value!r}"


def closest_key(key: str, known) -> str | None:
  """The known key that `key` most likely misspells: the closest in its own section, else one of (nearly) the same
  name in another section; None when nothing is close."""
  section, _, leaf = key.rpartition(".")
  siblings = [k for k in known if k.rpartition(".")[0] == section]
  close = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
  if close:
    return f"{section}.{close[0]}" if section else close[0]
  elsewhere = {k.rpartition(".")[2]: k for k in reversed(list(known)) if "." in k and k not in siblings}
  close = difflib.get_close_matches(leaf, list(elsewhere), n=1, cutoff=0.8)
  return elsewhere[close[0]] if close else None


def unknown_key(key: str, value, known) -> errors.ConfigError:
  """The one line refusing `key`: the closest of the `known` keys, else the keys of its section."""
  close, section = closest_key(key, known), key.rpartition(".")[0]
  siblings = sorted({k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section})
  hint = f"did you mean {close}?" if close else f"the keys of {section or 'a config'}: {', '.join(siblings)}"
  return errors.ConfigError(f"config {_named(key, value)}: unknown key; {hint}")


def complete(config) -> ml_collections.ConfigDict:
  """`config` (a ConfigDict, filled in place, or a dict) with every key of SCHEMA: a key left out or None takes
  its default, every value checked (errors.ConfigError: one line naming the key). Idempotent."""
  config = _config_dict(config)
  with config.unlocked():
    _refuse_unknown_keys(config, "")
    for key in SCHEMA:
      _fill(config, key)
    for head in config.model.heads:  # a head without a loss weight weighs 1
      if head not in config.loss.weights:
        config.loss.weights[head] = 1.0
    _check_combinations(config)
  return config


def complete_section(section: str, values) -> ml_collections.ConfigDict:
  """One section alone, filled and checked as complete() does: for code that builds config.model (or .optim,
  .loss) in Python and hands it to what reads that section alone (models.build_model, the optimizer, the loss)."""
  root = ml_collections.ConfigDict({section: _config_dict(values)})
  with root.unlocked():
    _refuse_unknown_keys(root, "")
    for key in SCHEMA:
      if key.startswith(section + "."):
        _fill(root, key)
  return root[section]


def _config_dict(config) -> ml_collections.ConfigDict:
  if isinstance(config, ml_collections.ConfigDict):
    return config
  if not isinstance(config, dict):
    raise errors.ConfigError(f"a config is a ConfigDict or a dict of sections, not {type(config).__name__}")
  return ml_collections.ConfigDict(config)


def _refuse_unknown_keys(node, prefix: str) -> None:
  for name, value in node.items():
    key = f"{prefix}{name}"
    if key in SECTIONS:
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        refuse(key, value, "a section of keys")
      _refuse_unknown_keys(value, key + ".")
    elif key not in SCHEMA:
      raise unknown_key(key, value, list(SCHEMA) + SECTIONS)


def _fill(config, key: str) -> None:
  *path, leaf = key.split(".")
  node = config
  for part in path:
    if part not in node:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  spec = SCHEMA[key]
  value = node.get(leaf)
  if value is None:
    if spec.default is REQUIRED:
      raise errors.ConfigError(f"config {key}: missing (every config gives it): must be {spec.type.describe()}")
    if spec.default is not None:
      if leaf in node:
        del node[leaf]  # None stands for the default: the field takes the default's type
      node[leaf] = _fresh(spec.default)
    elif leaf not in node:
      node[leaf] = None
    return
  checked = spec.type.check(key, value)
  if checked is not value:  # 2 given for a float key, a list for names: stored as the schema's type
    del node[leaf]
    node[leaf] = checked


def _fresh(value):
  return ml_collections.ConfigDict(dict(value)) if isinstance(value, dict) else value


def _check_combinations(config) -> None:
  axes = {"mesh.data": config.mesh.data, "mesh.fsdp": config.mesh.fsdp}
  if list(axes.values()).count(-1) > 1:
    refuse("mesh.fsdp", -1, "a size when mesh.data is -1 (at most one axis takes the remaining devices)")
  if config.train.fsdp and axes not in ({"mesh.data": -1, "mesh.fsdp": 1}, {"mesh.data": 1, "mesh.fsdp": -1}):
    refuse("train.fsdp", True, f"False with mesh.data={axes['mesh.data']}, mesh.fsdp={axes['mesh.fsdp']} "
           "(train.fsdp=True is short for mesh.data=1, mesh.fsdp=-1)")
  if config.data.batch_size % config.optim.grad_accum_steps:
    refuse("optim.grad_accum_steps", config.optim.grad_accum_steps,
           f"a divisor of data.batch_size={config.data.batch_size} (the batch is cut into that many micro-batches)")
