"""`python -m translocator_jax.commands.calibrate --workdir DIR`: fit a checkpoint's confidence radii on the
validation split (WORKDIR/calibration.json; infer/calibration.py). translocator-train does it at the end of a run."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from translocator_jax.infer import calibration
from translocator_jax.runtime import cli

PROG = calibration.PROG


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_main, sys.argv[1:] if argv is None else argv, prog=PROG)


def _main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog=PROG, description=calibration.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_checkpoint_args(p)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--batch-size", type=int, default=None)
  args = p.parse_args(argv)
  record = calibration.fit(args.workdir or args.checkpoint, which=args.which, data_dir=args.data_dir,
                           batch_size=args.batch_size)
  print(json.dumps({k: v for k, v in record.items() if k != "grid"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
