"""Loading experiment configs: `configs/X.py[:arg]` files with get_config(arg), plus key=value overrides."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import math
import pathlib

import ml_collections

from translocator_jax import errors


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/earth_demo.py:tiny' -> get_config('tiny') of that file.

  A config file that lists its arguments (CONFIG_ARGS = ("tiny",)) refuses any other, naming them: get_config
  would otherwise quietly return its default for a misspelt one.
  """
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {file} not found (from --config {spec!r})")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise errors.ConfigError(f"config file {file} is not valid Python: {e.msg} (line {e.lineno})") from None
  if not hasattr(module, "get_config"):
    raise errors.ConfigError(f"config file {file} has no get_config(arg) function")
  known = getattr(module, "CONFIG_ARGS", None)
  if arg and known is not None and arg not in known:
    close = difflib.get_close_matches(arg, known, n=1)
    hint = f"did you mean {file}:{close[0]}? " if close else ""
    raise errors.ConfigError(f"--config {spec!r}: {file} has no config {arg!r}; {hint}it has: "
                             f"{', '.join([str(file)] + [f'{file}:{a}' for a in known])}")
  return module.get_config(arg or None)


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string


# Settings the code reads with a default (`config.train.get("fsdp_min_size", ...)`): an override may add them to a
# config that does not spell them out. Any other key must already be in the config.
OPTIONAL_KEYS = {
    "model": {"attention", "depth", "dropout", "dtype", "fusion", "fusion_per_layer", "gelu_approximate",
              "head_zeroinit", "ln_epsilon", "mlp_dim", "num_heads", "num_seg_classes", "patch_size", "remat",
              "remat_policy", "scan_layers", "seg_embed_dim", "seg_input", "width"},
    "data": {"augmentation", "data_dir", "max_bad_records", "partition_files", "partitions_dir", "shuffle_seed", "train_split", "val", "val_split",
             "worker_count"},
    "train": {"async_checkpoints", "best_metric", "best_mode", "ckpt_every", "eval_every", "fsdp", "fsdp_min_size",
              "keep_checkpoints", "log_every", "progress_bar", "tensorboard"},
    "eval": {"batch_size", "crop_fraction", "datasets", "refine", "tta"},
    "optim": {"b1", "b2", "clip_norm", "decay_regex", "end_lr_factor", "eps", "grad_accum_steps", "lr_multipliers",
              "momentum", "nesterov", "warmup_steps", "weight_decay"},
}


def dotted_keys(config, prefix: str = "") -> list[str]:
  """Every leaf key of a config as 'section.key'."""
  out = []
  for k, v in config.items():
    name = f"{prefix}{k}"
    out += dotted_keys(v, name + ".") if isinstance(v, (dict, ml_collections.ConfigDict)) else [name]
  return out


def _unknown_key(config, key: str, item: str) -> errors.ConfigError:
  leaves = dotted_keys(config)
  known = sorted(set(leaves) | {k.rsplit(".", i)[0] for k in leaves for i in range(1, k.count(".") + 1)})
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  hint = (f"; did you mean {close[0]}?" if close
          else f" (its sections: {', '.join(sorted(k for k in config.keys()))})")
  return errors.ConfigError(f"--set {item!r}: the config has no key {key!r}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies 'train.total_steps=100'-style overrides (values parsed as Python literals).

  A key the config does not have is refused naming the closest one (unless it is one of OPTIONAL_KEYS); a value
  of another type than the config's is refused naming the key and both types (ints may become floats, and a key
  whose value is None takes anything).
  """
  for item in overrides or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise errors.ConfigError(f"--set {item!r}: expected key=value, e.g. train.total_steps=100")
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
      if part not in node or not isinstance(node[part], (dict, ml_collections.ConfigDict)):
        raise _unknown_key(config, ".".join(parts[:depth + 1]), item)
      node = node[part]
    leaf = parts[-1]
    new = parse_value(value)
    if leaf not in node:
      if not (len(parts) == 2 and leaf in OPTIONAL_KEYS.get(parts[0], ())):
        raise _unknown_key(config, key, item)
    else:
      new = _checked(key, node[leaf], new)
    with config.unlocked() if hasattr(config, "unlocked") else _null():
      try:
        node[leaf] = new
      except TypeError as e:  # ConfigDict's own type check
        raise errors.ConfigError(f"--set {item!r}: {e}") from None
  return config


def _checked(key: str, old, new):
  """`new` if it may replace `old`, else errors.ConfigError naming the key and the types."""
  if old is None or new is None or isinstance(old, (dict, ml_collections.ConfigDict)) and isinstance(new, dict):
    return new
  if isinstance(old, bool) or isinstance(new, bool):
    ok = isinstance(old, bool) and isinstance(new, bool)
  elif isinstance(old, float):
    ok = isinstance(new, (int, float))
    new = float(new) if ok else new
  elif isinstance(old, (list, tuple)):
    ok = isinstance(new, (list, tuple))
  else:
    ok = isinstance(new, type(old))
  if not ok:
    raise errors.ConfigError(f"--set {key}={new!r}: expected {type(old).__name__} (the config has {old!r}), "
                             f"got {type(new).__name__}")
  return new


@dataclasses.dataclass(frozen=True)
class Allowed:
  """The values a numeric setting may take: above `low` (`low_open`: strictly), below `high` (strictly), a whole
  number when `whole`; None only when `none_ok` (its reader treats None as its default)."""
  low: float | None = None
  low_open: bool = False
  high: float | None = None
  whole: bool = False
  none_ok: bool = False

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      bound = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"
    elif self.low is not None:
      bound = f"{'>' if self.low_open else '>='} {self.low:g}"
    else:
      bound = f"< {self.high:g}"
    return f"a whole number {bound}" if self.whole else bound

  def allows(self, value) -> bool:
    if value is None:
      return self.none_ok
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return False
    if self.whole and value != int(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or value < self.high


# The training values a run would otherwise take without a word (a negative learning rate trains; a smoothing of 1
# or a dropout of 1 learns nothing; a batch of 0 fails deep in the pipeline): checked once, when the trainer has
# loaded its config and applied the overrides, before any dataset is built. A key the config leaves out keeps its
# reader's default and is not checked. The warm-up may exceed the run: the schedule clamps it.
TRAINING_VALUES = {
    "optim.learning_rate": Allowed(low=0, low_open=True),
    "optim.warmup_steps": Allowed(low=0, whole=True),
    "optim.weight_decay": Allowed(low=0),
    "optim.grad_accum_steps": Allowed(low=1, whole=True, none_ok=True),
    "loss.label_smoothing": Allowed(low=0, high=1, none_ok=True),
    "model.dropout": Allowed(low=0, high=1),
    "data.batch_size": Allowed(low=0, low_open=True, whole=True),
    "train.total_steps": Allowed(low=0, low_open=True, whole=True),
    "train.log_every": Allowed(low=0, whole=True),
    "train.ckpt_every": Allowed(low=0, whole=True, none_ok=True),
    "train.eval_every": Allowed(low=0, whole=True, none_ok=True),
}


def check_training_values(config) -> None:
  """errors.ConfigError naming the first of TRAINING_VALUES outside its range: `config KEY=VALUE: must be RANGE`."""
  for key, allowed in TRAINING_VALUES.items():
    section, _, leaf = key.partition(".")
    node = config.get(section) if hasattr(config, "get") else None
    if not hasattr(node, "get") or leaf not in node:
      continue
    value = node[leaf]
    if not allowed.allows(value):
      finite = isinstance(value, float) and not math.isfinite(value)
      must = f"a finite number {allowed.describe()}" if finite else allowed.describe()
      raise errors.ConfigError(f"config {key}={value!r}: must be {must}")


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False
