"""Loading experiment configs: `configs/X.py[:arg]` files with get_config(arg), plus key=value overrides; both
return the config completed and checked against the schema (config_schema.py)."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib

import ml_collections

from translocator_jax import errors
from translocator_jax.runtime import config_schema


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/earth_demo.py:tiny' -> get_config('tiny') of that file, completed (config_schema.complete)."""
  return config_schema.complete(read_config_file(spec))


def read_config_file(spec: str):
  """'configs/earth_demo.py:tiny' -> get_config('tiny') of that file, as the file returns it.

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
  close = config_schema.closest_key(key, known)
  hint = f"; did you mean {close}?" if close else f" (its sections: {', '.join(sorted(config.keys()))})"
  return errors.ConfigError(f"--set {item!r}: the config has no key {key!r}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies 'train.total_steps=100'-style overrides (values parsed as Python literals) to the completed config.

  Any key of the schema may be set, whether or not the config file spells it out; any other key is refused
  naming the closest one. A value of another type than the key's is refused naming the key and both types (ints
  may become floats, and a key whose value is None takes anything); the result is checked as a whole
  (config_schema.complete: ranges, choices, combinations).
  """
  config = config_schema.complete(config)
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
    if leaf not in node:
      raise _unknown_key(config, key, item)
    new = _checked(key, node[leaf], parse_value(value))
    with config.unlocked():
      try:
        node[leaf] = new
      except TypeError as e:  # ConfigDict's own type check
        raise errors.ConfigError(f"--set {item!r}: {e}") from None
  return config_schema.complete(config)


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
