"""Loading experiment configs: `configs/X.py[:arg]` files with get_config(arg), plus key=value overrides."""
from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/earth_demo.py:tiny' -> get_config('tiny') of that file."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.exists():
    raise FileNotFoundError(f"config file {file} not found (from --config {spec!r})")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"{file} has no get_config(arg) function")
  return module.get_config(arg or None)


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies 'train.total_steps=100'-style overrides (values parsed as Python literals)."""
  for item in overrides or []:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected key=value, e.g. train.total_steps=100")
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
      if part not in node:
        raise KeyError(f"override {item!r}: config has no section {part!r}")
      node = node[part]
    with config.unlocked() if hasattr(config, "unlocked") else _null():
      node[parts[-1]] = parse_value(value)
  return config


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False
