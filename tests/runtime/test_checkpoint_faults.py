"""A checkpoint write that fails (a full disk) is one CheckpointWriteError naming the step that failed, even when
orbax raises it from its writer thread at the next save; the previous checkpoint stays readable."""
import builtins
import errno
import os

import jax.numpy as jnp
import ml_collections
import pytest

from translocator_jax import errors
from translocator_jax.runtime import checkpoints

CONFIG = ml_collections.ConfigDict({"model": {"width": 4}})


def _state(step):
  return {"step": jnp.int32(step), "params": {"w": jnp.full((3,), float(step))}, "opt_state": {}}


@pytest.fixture
def disk_full_for(monkeypatch):
  """disk_full_for(step_dir, file_name): writes of that file under that step fail as on a full disk."""

  def install(step_dir, file_name):
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
      path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
      if path.startswith(f"{step_dir}.") and path.endswith(file_name) and set(mode) & set("wax+"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)

  return install


def test_a_failed_async_save_is_reported_under_its_own_step(tmp_path, disk_full_for):
  ckpt = checkpoints.Checkpointer(tmp_path, keep=5)
  ckpt.save(1, _state(1), None, CONFIG)
  ckpt.wait()
  # The commit marker is written by orbax's background thread: save(2) returns, the failure comes later.
  disk_full_for(ckpt.step_dir(2), "commit_success.txt")
  ckpt.save(2, _state(2), None, CONFIG)
  with pytest.raises(checkpoints.CheckpointWriteError) as e:
    ckpt.save(3, _state(3), None, CONFIG)
  message = str(e.value)
  assert isinstance(e.value, errors.Fault) and "\n" not in message
  assert message.startswith(f"could not write checkpoint step 2 to {ckpt.step_dir(2)}: No space left on device")
  assert f"the previous checkpoint, step 1 ({ckpt.step_dir(1)}), is intact" in message, message
  assert "rerunning the same command resumes from it" in message
  ckpt.close()  # the failure was reported once: closing does not raise it again

  again = checkpoints.Checkpointer(tmp_path, keep=5)
  step, state = again.restore_latest(_state(0))
  again.close()
  assert step == 1 and float(state["params"]["w"][0]) == 1.0


def test_a_first_save_that_fails_says_none_was_saved(tmp_path, disk_full_for):
  ckpt = checkpoints.Checkpointer(tmp_path, async_save=False)
  disk_full_for(ckpt.step_dir(5), "_CHECKPOINT_METADATA")
  with pytest.raises(checkpoints.CheckpointWriteError) as e:
    ckpt.save(5, _state(5), None, CONFIG)
    ckpt.wait()
  ckpt.close()
  assert "could not write checkpoint step 5" in str(e.value) and "No space left on device" in str(e.value)
  assert "no checkpoint was saved before it" in str(e.value), str(e.value)
