"""The one set-up of every command line (translocator-train, -eval, -predict, the demo, the data_prep scripts).

`run(main, argv, prog=...)` applies the host performance settings before JAX starts its backend, joins a
multi-process job when the environment describes one, sets up logging, and turns an error into one line on
stderr instead of a traceback:
  exit status 2  a user's mistake (errors.UserError: a missing file, a bad value, an unknown key, a workdir
                 another job uses): the command as given cannot run;
  exit status 1  a Fault: the run stopped for a reason outside the command line (a full disk, a failed write);
                 the message says what is intact and whether rerunning the same command continues.
Any other exception is a bug in our code: it propagates with its traceback (exit status 1).
TRANSLOCATOR_TRACEBACK=1 lets the traceback through (for bug reports).

Orbax and tensorstore report each failure they raise once more on their own (error logs with tracebacks from
their threads; for the reads a failed restore abandoned, asyncio's "Task exception was never retrieved" and
"Event loop is closed" from tensorstore's callbacks; for the writes a failed save abandoned, "coroutine ... was
never awaited"); we report the raised error itself, so these duplicates are dropped. `--verbose`
(add_verbose_arg) or TRANSLOCATOR_VERBOSE=1 keeps them and adds the tracebacks behind our one-line warnings.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from translocator_jax.errors import Fault, UserError
from translocator_jax.runtime import perf, sharding

USAGE_ERROR = 2
FAULT = 1
VERBOSE_ENV = "TRANSLOCATOR_VERBOSE"


# What a person's own input raises: errors.UserError (a bad config value, an unknown key, a damaged dataset, a
# build that cannot run, ...) and the OS's refusals of a path they gave. A ValueError or KeyError is not among
# them: one that escapes a command is a bug in our code, and reaches the person with its traceback (exit 1).
# json.JSONDecodeError: a JSON file on disk that is damaged (ours are written whole, then renamed).
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError, json.JSONDecodeError)

_verbose = False
_ABANDONED_COROUTINE = r"coroutine '.*' was never awaited"


def verbose() -> bool:
  """Whether details (tracebacks, libraries' own logs of a failure) go with the one-line messages."""
  return _verbose or os.environ.get(VERBOSE_ENV) == "1"


def error_line(prog: str, error: BaseException) -> str:
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return f"{prog}: error: {text}"


class _LibraryDuplicates(logging.Filter):
  """Drops orbax's own error logs (with tracebacks) of a failure that it also raises to us, its notice that a
  read-only manager (every restore for inference) is read-only, and asyncio's logs of the abandoned reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    if verbose():
      return True
    if record.name == "asyncio":
      return "exception was never retrieved" not in str(record.msg).split("\n", 1)[0]
    if f"{os.sep}orbax{os.sep}" not in (record.pathname or ""):
      return True
    failure = record.levelno >= logging.ERROR or record.exc_info
    return not (failure or str(record.msg).startswith("Given directory is read only"))


_LIBRARY_DUPLICATES = _LibraryDuplicates()


def _unraisable_hook(default: Callable) -> Callable:
  """sys.unraisablehook without the "Event loop is closed" errors of tensorstore reads still in flight when a
  failed (async) restore closed its event loop: the restore's own error is what matters."""

  def hook(unraisable) -> None:
    loop_closed = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
    if verbose() or not loop_closed:
      default(unraisable)

  hook.quiets_closed_loops = True
  return hook


def drop_library_duplicates() -> None:
  """Installs the filters above (idempotent); `verbose()` turns them off while they stay installed."""
  # orbax logs through absl's logger, a few of its modules through the root logger.
  for logger in (logging.getLogger("absl"), logging.getLogger(), logging.getLogger("asyncio")):
    if _LIBRARY_DUPLICATES not in logger.filters:
      logger.addFilter(_LIBRARY_DUPLICATES)
  if not getattr(sys.unraisablehook, "quiets_closed_loops", False):
    sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
  if not verbose():
    warnings.filterwarnings("ignore", message=_ABANDONED_COROUTINE, category=RuntimeWarning)


class _VerboseAction(argparse.Action):

  def __call__(self, parser, namespace, values, option_string=None):
    global _verbose
    _verbose = True
    warnings.filterwarnings("default", message=_ABANDONED_COROUTINE, category=RuntimeWarning)  # ahead of "ignore"
    setattr(namespace, self.dest, True)


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--verbose", action=_VerboseAction, nargs=0, default=False,
                      help=f"also show the details behind warnings and errors: tracebacks, the checkpoint "
                           f"library's own logs (or set {VERBOSE_ENV}=1)")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *, prog: str,
        distributed: bool = True) -> int:
  """Calls main(argv) under the common set-up; returns its exit status."""
  perf.configure_cpu_runtime()
  logging.basicConfig(level=logging.WARNING)
  drop_library_duplicates()
  if distributed:
    sharding.maybe_initialize_distributed()
  try:
    return main(argv)
  except (*USER_ERRORS, Fault) as e:
    if os.environ.get("TRANSLOCATOR_TRACEBACK") == "1":
      raise
    print(error_line(prog, e), file=sys.stderr)
    return FAULT if isinstance(e, Fault) else USAGE_ERROR


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
  """--workdir DIR | --checkpoint STEP_DIR, and --which latest|best: which checkpoint a command reads."""
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training workdir (its newest readable checkpoint, or --which best)")
  src.add_argument("--checkpoint", help="one checkpoint step directory (WORKDIR/checkpoints/STEP)")
  parser.add_argument("--which", default="latest", choices=("latest", "best"))
