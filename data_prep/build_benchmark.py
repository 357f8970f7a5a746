"""Build a benchmark test set (im2gps, im2gps3k, yfcc26k, yfcc4k).

  python -m data_prep.build_benchmark --name im2gps3k --images im2gps3k_rgb_images.tar.gz --segmentations im2gps3k_seg_images_PNG.tar.gz --output data/im2gps3k

Exit status 0 when written (skipped files listed in OUTPUT/report.json), 2 when it could not run.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.benchmark_main, prog=build.BENCHMARK_PROG, distributed=False))
