"""Fixtures for the model tests: the tiny config (configs/model_tiny.py, loaded by path and completed)."""
import importlib.util

import pytest

from translocator_jax import paths
from translocator_jax.runtime import config_schema


def tiny_config(arg: str | None = None):
  spec = importlib.util.spec_from_file_location("model_tiny", paths.REPO_ROOT / "configs" / "model_tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_schema.complete(module.get_config(arg))


@pytest.fixture
def tiny():
  """tiny(arg) -> the full tiny ConfigDict (use .model)."""
  return tiny_config
