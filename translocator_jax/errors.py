"""The one home of the error types that say whose the failure is.

A `UserError` is a person's mistake: what they asked for (a config value, a command-line argument, a file they
gave) cannot run; a command reports it in one line and exits 2 (runtime/cli.py). A `Fault` stops a run for a
reason outside the command line (a full disk, a failed write); one line, exit 1. Anything else that escapes a
command is a bug in our code and reaches the person with its traceback.

The subclasses keep ValueError or RuntimeError as a second base, so `except ValueError` still catches them.
This module imports nothing of ours: every room of the house may raise these.
"""


class UserError(Exception):
  """A mistake in what a person asked for: the command as given cannot run; the message says what and where."""


class ConfigError(UserError, ValueError):
  """A config key, value or combination of values that cannot run; the message names the key."""


class DataError(UserError, ValueError):
  """A dataset's or a given file's content is wrong (a damaged shard, a bad record, missing maps, a malformed
  CSV); the message names the file and, where it helps, the command that rebuilds it."""


class CheckpointError(UserError, ValueError):
  """A checkpoint or weights file that is not usable for this model (another model, a wrong layout or key)."""


class BuildError(UserError, RuntimeError):
  """A dataset build cannot run at all (a missing input, a conflicting output folder, ...)."""


class InputError(UserError, ValueError):
  """A prediction input (a photo, a folder, a map) that cannot be turned into model inputs."""


class Fault(Exception):
  """The run could not go on for a reason outside the command line; the message says what failed, where, what
  is intact and what to do next."""
