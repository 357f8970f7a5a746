"""The one set-up of every command line (translocator-train, -eval, -predict, the demo).

`run(main, argv, prog=...)` applies the host performance settings before JAX starts its backend, joins a
multi-process job when the environment describes one, sets up logging, and turns a user's mistake (a missing
file, a bad value, an unknown key) into one line on stderr and exit status 2 instead of a traceback.
TRANSLOCATOR_TRACEBACK=1 lets the traceback through (for bug reports).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from translocator_jax.runtime import perf, sharding

USAGE_ERROR = 2


class UserError(Exception):
  """A mistake in what the user asked for; the message says what and where."""


# What a person's own input raises: a missing file, a bad value, an unknown key.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, KeyError)


def error_line(prog: str, error: BaseException) -> str:
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return f"{prog}: error: {text}"


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *, prog: str,
        distributed: bool = True) -> int:
  """Calls main(argv) under the common set-up; returns its exit status."""
  perf.configure_cpu_runtime()
  logging.basicConfig(level=logging.WARNING)
  if distributed:
    sharding.maybe_initialize_distributed()
  try:
    return main(argv)
  except USER_ERRORS as e:
    if os.environ.get("TRANSLOCATOR_TRACEBACK") == "1":
      raise
    print(error_line(prog, e), file=sys.stderr)
    return USAGE_ERROR


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
  """--workdir DIR | --checkpoint STEP_DIR, and --which latest|best: which checkpoint a command reads."""
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training workdir (its newest readable checkpoint, or --which best)")
  src.add_argument("--checkpoint", help="one checkpoint step directory (WORKDIR/checkpoints/STEP)")
  parser.add_argument("--which", default="latest", choices=("latest", "best"))
