"""Check every shard of the built datasets: checksum against the build's manifest, every record read back.

  python -m data_prep.verify --data_dir ~/tensorflow_datasets                 # every dataset there
  python -m data_prep.verify --data_dir ~/tensorflow_datasets --name im2gps3k  # one of them

Exit status 0 when every shard is sound, 1 with the list of bad shards (file, what is wrong, the command that
rebuilds it), 2 when it could not run. The logic is translocator_jax/data/build/verify.py.
"""
import sys

from translocator_jax.data.build import verify
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(verify.main, prog=verify.PROG, distributed=False))
