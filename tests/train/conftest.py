"""Helpers for the trainer tests: run `translocator-train` in a subprocess with a shared compilation cache."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SYNTHETIC_CONFIG = str(pathlib.Path(__file__).with_name("synthetic_config.py"))


def subprocess_env(cache_dir: pathlib.Path, devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


# translocator-train with every step slowed by {delay} s (so a test can kill the run mid-way): the test wraps the
# train step from outside; the trainer itself has no hook for it.
_SLOW_TRAIN = """
import sys, time
from translocator_jax.commands import train as main
from translocator_jax.train import step
make = step.make_train_step
def slow_make_train_step(*args, **kwargs):
  train_step = make(*args, **kwargs)
  def slowed(state, batch):
    time.sleep({delay})
    return train_step(state, batch)
  return slowed
step.make_train_step = slow_make_train_step
sys.exit(main.main())
"""


def train_cmd(workdir, config=SYNTHETIC_CONFIG, overrides=(), summary=None, step_delay_s=None) -> list[str]:
  entry = ["-m", "translocator_jax.commands.train"] if step_delay_s is None else [
      "-c", _SLOW_TRAIN.format(delay=float(step_delay_s))]
  cmd = [sys.executable, *entry, "--config", config, "--workdir", str(workdir)]
  for o in overrides:
    cmd += ["--set", o]
  if summary:
    cmd += ["--summary-json", str(summary)]
  return cmd


@pytest.fixture(scope="session", autouse=True)
def jax_cache(tmp_path_factory) -> pathlib.Path:
  """One persistent compilation cache for this session's subprocesses and in-process runs (identical programs
  compile once; the cached executable is the same code, so bit-exact comparisons are unaffected)."""
  import jax  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("jax_cache")
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


@pytest.fixture(scope="session")
def run_train(jax_cache, tmp_path_factory):
  """run_train(workdir, overrides=(), devices=1, config=...) -> (summary dict, stdout+stderr)."""
  summaries = tmp_path_factory.mktemp("summaries")
  counter = iter(range(10 ** 6))

  def run(workdir, overrides=(), devices=1, config=SYNTHETIC_CONFIG, check=True, extra_env=None):
    summary = summaries / f"summary_{next(counter)}.json"
    env = {**subprocess_env(jax_cache, devices), **(extra_env or {})}
    proc = subprocess.run(train_cmd(workdir, config, overrides, summary), env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    out = proc.stdout + proc.stderr
    if check:
      assert proc.returncode == 0, out[-4000:]
    return (json.loads(summary.read_text()) if summary.exists() else None), out

  return run


@pytest.fixture
def train_tools(jax_cache):
  """The helpers above, for tests that drive the subprocess themselves."""
  import types  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(env=lambda devices=1: subprocess_env(jax_cache, devices), cmd=train_cmd, repo=REPO,
                               synthetic_config=SYNTHETIC_CONFIG)
