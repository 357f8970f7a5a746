"""Build a dataset of your own geotagged photos.

  python -m data_prep.photos_to_dataset --input ~/Pictures/trip --output data/trip --segmenter models/segformer-ade

Exit status 0 when written (skipped files listed in OUTPUT/report.json), 2 when it could not run.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.photos_main, prog=build.PHOTOS_PROG, distributed=False))
