"""Build the three S2 partitions (GeoEstimation CSV layout) from a dataset's training coordinates.

  python -m data_prep.build_partitions --input mp16_places365.csv --output partitions/
  python -m data_prep.build_partitions --input /data/tfds/mp16/1.0.0 --split train --output partitions/

Writes cells_{tau_min}_{tau_max}.csv for each --tau-max (default 5000 2000 1000) and partitions_report.json
(bad CSV rows skipped and listed). Logic: translocator_jax/data/build/partitions.py.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.partitions_main, prog=build.PARTITIONS_PROG, distributed=False))
