"""Check every shard of the built datasets: checksum against the build's manifest, every record read back.

  python -m data_prep.verify --data_dir ~/tensorflow_datasets                 # every dataset there
  python -m data_prep.verify --data_dir ~/tensorflow_datasets --name im2gps3k  # one of them

Exit status 0 when every shard is sound, 1 with the list of bad shards (file, what is wrong, the command that
rebuilds it), 2 when it could not run. The logic is translocator_jax/data/build/verify.py, the command line
translocator_jax/commands/build.py.
"""
import sys

from translocator_jax.commands import build
from translocator_jax.runtime import cli as runtime_cli

if __name__ == "__main__":
  sys.exit(runtime_cli.run(build.verify_main, prog=build.VERIFY_PROG, distributed=False))
