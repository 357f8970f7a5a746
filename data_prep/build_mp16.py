"""Build MP-16 (train) as a TFDS/ArrayRecord folder.

  python -m data_prep.build_mp16 --csv mp16_places365.csv --images mp16_rgb_images.tgz --segmentations mp16_seg_images_PNG.tgz --output data/mp16 --workers 16

Exit status 0 when written (skipped files listed in OUTPUT/report.json), 2 when it could not run.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.mp16_main, prog=build.MP16_PROG, distributed=False))
