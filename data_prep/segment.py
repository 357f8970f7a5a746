"""Write ADE20K-150 segmentation maps for photos that have none.

  python -m data_prep.segment --images photos/ --output photo_maps/ --model models/segformer-ade

Exit status 0 when written (skipped files listed in OUTPUT/report.json), 2 when it could not run.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.segment_main, prog=build.SEGMENT_PROG, distributed=False))
