"""Preemption: a stop request (SIGTERM, SIGINT) turned into one step at which every host saves and stops.

A Spot / preemptible Cloud TPU VM gets SIGTERM some time before it is taken away; Ctrl-C sends SIGINT. While
`StopSignals` is entered (the training loop holds it for the run), both only set a flag: the loop finishes the
step it is in, saves it like a periodic checkpoint, waits for the save, then raises `TrainingPreempted`
(`translocator-train` exits with `exit_status`: 143 = 128 + SIGTERM, 130 = 128 + SIGINT). Further signals while
that happens are ignored, so the checkpoint being written is never cut short; SIGKILL or SIGQUIT (Ctrl-\\) still
stop the process at once (an unfinished save is then never committed, and the next run resumes from the checkpoint
before it).

Every host must stop at the same step (a save is a collective). Two sources, both agreed on by all hosts:
- the JAX preemption sync point (`multihost_utils.reached_preemption_sync_point`), when `jax.distributed` runs
  with its preemption service (the default). That service installs its own SIGTERM handler (in C++); a Python
  handler would replace it, so SIGTERM is left to it and only SIGINT is caught here. The sync point is a local
  check of a step the coordination service chose (one past the furthest host's step): free to ask every step, as
  the protocol requires.
- the local flag. With one process it is read directly (no collective). With several, the hosts OR their flags
  with an all-gather every `agree_every` steps: the all-gather waits for the step in flight (it is queued behind
  it on the devices), which would cost the loop its one step of look-ahead if done every step; every few steps a
  stop request waits at most that many more steps, well inside a preemption notice's grace period.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from translocator_jax import errors

AGREE_EVERY = 10  # steps between two all-gathers of the local flag when there are several processes


class TrainingPreempted(errors.Fault):
  """Training stopped on a signal after saving the step it was in; rerunning the same command resumes from it."""

  def __init__(self, step: int, signum: int, checkpoint: Any):
    self.step, self.signum, self.checkpoint = int(step), int(signum), checkpoint
    super().__init__(f"preempted at step {self.step} ({signal.Signals(self.signum).name}): checkpoint saved to "
                     f"{checkpoint}; rerunning the same command resumes from it")

  @property
  def exit_status(self) -> int:
    """The shell's status of a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + self.signum


def _sync_point_available() -> bool:
  """Whether reached_preemption_sync_point works: jax.distributed is up with its preemption service."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class StopSignals:
  """`with StopSignals() as stop:` catches SIGTERM / SIGINT; `stop.agreed(step)` (called by every host at every
  step, in order) says whether all hosts stop after this step. Handlers are installed in the main thread only (the
  only one Python lets install them) and the previous ones are put back on exit."""

  def __init__(self, agree_every: int = AGREE_EVERY):
    self.agree_every = max(int(agree_every), 1)
    self.signum: int | None = None  # the first signal this process got
    self._previous: dict[int, Any] = {}
    self._sync_point = False
    self._multi = False

  def _handler(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self.signum is None:  # later ones are ignored: the stop is under way
      self.signum = signum

  def __enter__(self) -> "StopSignals":
    self._sync_point = _sync_point_available()
    self._multi = jax.process_count() > 1
    signals = [signal.SIGINT] if self._sync_point else [signal.SIGTERM, signal.SIGINT]
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.getsignal(s)
        signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for s, previous in self._previous.items():
      # None: the previous handler was not set from Python; the default is the closest we can put back.
      signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    self._previous.clear()

  @property
  def requested(self) -> bool:
    """Whether this process got a signal (its own view, before the hosts agree)."""
    return self.signum is not None

  def agreed(self, step: int) -> bool:
    """True on every host at the same step once any host was asked to stop. No collective with one process."""
    reached = self._sync_point and multihost_utils.reached_preemption_sync_point(int(step))
    if not self._multi:
      stop = reached or self.requested
    elif step % self.agree_every == 0:
      flags = multihost_utils.process_allgather(np.asarray(self.requested))
      stop = reached or bool(np.any(flags))
    else:
      stop = reached
    if stop and self.signum is None:
      self.signum = signal.SIGTERM  # the sync point's notice (SIGTERM), or another host's request
    return stop

  @property
  def exit_status(self) -> int:
    return 128 + int(self.signum if self.signum is not None else signal.SIGTERM)
