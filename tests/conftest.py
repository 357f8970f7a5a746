"""Shared fixtures. Tests run on the CPU; multi-device tests fake devices in a subprocess."""
import pathlib

import pytest

from translocator_jax import paths


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  return paths.shared_data_dir()
