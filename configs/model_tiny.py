"""Tiny TransLocator configs for tests and quick checks: the paper config with a 2-layer, 32-wide model.

  get_config()                          cls_sum fusion, palette seg input, 32 px images, patch 8
  get_config("fusion=none")             any config.model field as key=value, comma separated
  get_config("fusion=late_concat,seg_input=classes,fusion_per_layer=True")
"""
import ast
import importlib.util
import pathlib

import ml_collections


def _paper_config_module():
  # Loaded by path so this file works however configs/ is imported (by path, as a package, or from tests).
  path = pathlib.Path(__file__).with_name("translocator_b16_mp16.py")
  spec = importlib.util.spec_from_file_location("translocator_b16_mp16", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  c = _paper_config_module().get_config("runlocal")
  c.model.variant = "Ti/8"
  c.model.width = 32
  c.model.depth = 2
  c.model.mlp_dim = 64
  c.model.num_heads = 2
  c.model.image_size = 32
  c.model.num_seg_classes = 12
  c.model.heads = ml_collections.ConfigDict({"coarse": 5, "middle": 7, "fine": 11, "scene": 3})
  c.data.batch_size = 4
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a bare string such as none / classes
    c.model[key.strip()] = value
  return c
