"""Shared fixtures. Tests run on the CPU; multi-device tests fake devices in a subprocess."""
import pathlib

import pytest

from translocator_jax import paths
from translocator_jax.runtime import perf

# Before JAX starts here or in any subprocess a test runs: libtpu (dev extra) looks for a TPU quietly.
perf.quiet_libtpu_off_tpu()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  return paths.shared_data_dir()


@pytest.fixture(scope="session")
def earth_tiny_data(tmp_path_factory) -> pathlib.Path:
  """The TFDS data dir holding the tiny Earth-patches set, built once per test session (seconds). Read it only:
  a test that damages a set copies it first."""
  from translocator_jax.data.earth_patches import dataset as earth_patches

  data_dir = tmp_path_factory.mktemp("tfds")
  earth_patches.ensure_built(data_dir, "tiny")
  return data_dir


@pytest.fixture(scope="session")
def earth_tiny_run(tmp_path_factory, earth_tiny_data):
  """(workdir, data_dir) of configs/earth_demo.py:tiny trained once per test session (about a minute), with its
  confidence radii fitted on validation as translocator-train does."""
  from translocator_jax.commands import demo
  from translocator_jax.infer import calibration
  from translocator_jax.train import loop

  data_dir = earth_tiny_data
  workdir = tmp_path_factory.mktemp("earth_tiny")
  loop.train(demo.load_config(quick=True, data_dir=str(data_dir)), workdir)
  calibration.fit(workdir, data_dir=str(data_dir))
  return workdir, data_dir
