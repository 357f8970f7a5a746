"""Where the project's shared, read-only metadata lives (../shared/data beside the repo, as in CI)."""
from __future__ import annotations

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"


def shared_data_dir() -> pathlib.Path:
  """The shared data folder: $TRANSLOCATOR_SHARED_DATA, else ../shared/data beside the repo checkout."""
  env = os.environ.get("TRANSLOCATOR_SHARED_DATA")
  path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
  if not path.is_dir():
    raise FileNotFoundError(
        f"shared data folder not found at {path}; set TRANSLOCATOR_SHARED_DATA to the folder holding "
        "partitions/ and benchmarks/")
  return path


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where datasets live: `data_dir` (config.data.data_dir) if given, else $TFDS_DATA_DIR, else
  ~/tensorflow_datasets."""
  return pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def cache_dir() -> pathlib.Path:
  """Where derived tables are cached between processes: $TRANSLOCATOR_CACHE, else $XDG_CACHE_HOME/translocator_jax,
  else ~/.cache/translocator_jax (created on first use by whoever writes there)."""
  env = os.environ.get("TRANSLOCATOR_CACHE")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "translocator_jax"
