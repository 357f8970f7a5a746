"""Write ADE20K-150 segmentation maps for photos that have none.

  python -m data_prep.segment --images photos/ --output photo_maps/ --model models/segformer-ade

Exit status 0 when written (skipped files listed in OUTPUT/report.json), 2 when it could not run.
"""
import sys

from translocator_jax.data.build import cli
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(cli.segment_main, prog=cli.SEGMENT_PROG, distributed=False))
