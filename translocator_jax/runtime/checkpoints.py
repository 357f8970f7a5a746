"""Checkpoints: orbax CheckpointManager holding the train state, the grain iterator state and the config.

Layout of a workdir:
  config.json                 the run's config (also inside every checkpoint: a step directory is self-describing)
  checkpoints/<step>/state    train state {'step', 'params', 'opt_state'}
  checkpoints/<step>/data     the data iterator's state (grain checkpoint handler, one JSON file per process)
  checkpoints/<step>/config   the config as JSON
Saves are asynchronous. The last `keep` checkpoints are kept, plus the best one on validation when a metric
is given. On restore a checkpoint that fails to load (corrupt, half-written) is reported in one line and the
previous one is tried. A save that fails (a full disk: orbax raises it from its writer thread, at the next save
or at the wait) raises CheckpointWriteError, one message naming the step, the path, the cause and the checkpoint
that is intact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Any

import grain.checkpoint as grain_ckpt
from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm
from translocator_jax import errors
from translocator_jax.models import layout
from translocator_jax.runtime import cli
from translocator_jax.runtime import config_schema
from translocator_jax.runtime import metrics_writer


CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
CORRUPT_DIR = "checkpoints_unreadable"


class _IteratorSnapshot:
  """The iterator state at save time: the async save must not read an iterator that has moved on."""

  def __init__(self, iterator: Any):
    state = iterator.get_state()
    self._state = state if isinstance(state, bytes) else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._state


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return saved_config(json.loads(text))


def saved_config(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A run's saved config as the code reads it: completed, so keys added since it was saved take their defaults."""
  return config_schema.complete(ml_collections.ConfigDict(saved))


def as_path(path: str | os.PathLike) -> epath.Path:
  """A local (made absolute) or cloud (gs://...) path."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
  path = as_path(workdir) / CONFIG_FILE
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_json(config))
  return path


def params_fingerprint(params: Any) -> str:
  """sha256 (hex) over the parameters' paths, dtypes, shapes and bytes: equal iff bit-identical."""
  import hashlib  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in leaves:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    arr = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


class Checkpointer:
  """A thin wrapper over ocp.CheckpointManager for this project's train state."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", async_save: bool = True, read_only: bool = False):
    self.directory = as_path(workdir) / CHECKPOINT_DIR
    policies = [ocm.LatestN(n=int(keep))]
    if best_metric:
      policies.append(ocm.BestN(get_metric_fn=lambda m: float(m[best_metric]), reverse=best_mode == "min", n=1,
                                keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.best_metric = best_metric
    self._in_flight = None  # the step of the async save not yet known to be written
    self._write_failed = False

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_iterator: Any | None, config: ml_collections.ConfigDict,
           metrics: dict[str, float] | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state),
             "config": ocp.args.JsonSave(json.loads(config_to_json(config)))}
    if data_iterator is not None:
      items["data"] = grain_ckpt.CheckpointSave(_IteratorSnapshot(data_iterator))
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    self.wait()  # a failure of the previous (async) save surfaces here: reported under that save's step
    with self._write_failure_of(step):
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self._in_flight = step

  def wait(self) -> None:
    step, self._in_flight = self._in_flight, None
    with self._write_failure_of(step):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      if not self._write_failed:
        self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._write_failed:
          raise
        # orbax raises the reported write failure again from every later call; once is enough.

  @contextlib.contextmanager
  def _write_failure_of(self, step: int | None):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # any failure of a save: the message names its cause
      self._write_failed = True
      raise CheckpointWriteError(self._write_failure_message(step, e)) from e

  def _write_failure_message(self, step: int | None, error: BaseException) -> str:
    where = f"checkpoint step {step} to {self.step_dir(step)}" if step is not None else f"to {self.directory}"
    try:
      self.manager.reload()  # the steps on disk now: the failed one is not among them
      intact = [s for s in self.all_steps() if step is None or s < step]
    except Exception:  # pylint: disable=broad-except  # the directory itself may be what fails
      intact = []
    if intact:
      previous = (f"the previous checkpoint, step {intact[-1]} ({self.step_dir(intact[-1])}), is intact: once "
                  "that is fixed, rerunning the same command resumes from it")
    else:
      previous = "no checkpoint was saved before it: once that is fixed, rerunning the same command starts over"
    return f"could not write {where}: {_cause(error)}; {previous}"

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that loads; (None, None) when there is none.

    `data_iterator` (if given) is set to the saved iterator state. A checkpoint that fails to load is
    reported with a warning and the one before it is tried. A readable checkpoint of another model (the config
    changed under the same workdir) raises CheckpointMismatchError instead: retraining over it would lose it.
    """
    for step in reversed(self.all_steps()):
      problem = self._params_mismatch(step, abstract_state)
      if problem:
        raise CheckpointMismatchError(
            f"{self.step_dir(step)} holds parameters of another model than this config ({problem}). Resume with "
            "the config the run was started with (saved in the checkpoint's 'config' item), or use a new workdir.")
      try:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
          items["data"] = grain_ckpt.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = restored["state"]
        restored_step = int(np.asarray(jax.device_get(state["step"])))
        if restored_step != step:
          raise ValueError(f"state.step={restored_step} in checkpoint directory of step {step}")
        return step, state
      except Exception as e:  # pylint: disable=broad-except
        moved = self._set_aside(step)
        _warn(f"checkpoint {self.step_dir(step)} could not be restored ({_summary(e)}); moved it to {moved}; "
              "trying the previous one", e)
    return None, None

  def _params_mismatch(self, step: int, abstract_state: Any) -> str | None:
    """How the saved parameter tree differs from the config's (names, shapes); None if equal or unreadable."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved = handler.metadata(self.step_dir(step) / "state")  # shapes only, no arrays
      saved = (saved.tree if hasattr(saved, "tree") else saved)["params"]
      saved = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    except Exception:  # pylint: disable=broad-except  # unreadable metadata: the restore reports it as corrupt
      return None
    finally:
      handler.close()
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]}
    missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
    if missing or extra:
      layouts = layout.layout_of_paths(saved), layout.layout_of_paths(want)
      if None not in layouts and layouts[0] != layouts[1]:
        # Saved with the other config.model.scan_layers: the optimizer state is stacked (or not) like the params,
        # so resuming with the checkpoint's setting is the one way that needs no conversion of the train state.
        return (f"its layers are in the {layouts[0]} layout, the config's in the {layouts[1]} one: resume with "
                f"--set model.scan_layers={layouts[0] == 'scanned'}; for parameters alone, "
                "translocator_jax.models.scan_params / unscan_params convert between the layouts")
      return f"keys only in the config: {missing[:3]}, only in the checkpoint: {extra[:3]}"
    shapes = [f"{k}: checkpoint {saved[k]} vs config {want[k]}" for k in sorted(want) if saved[k] != want[k]]
    return "; ".join(shapes[:3]) or None

  def _set_aside(self, step: int) -> epath.Path:
    """Moves an unreadable step out of the manager's way (kept for inspection), so training can redo it."""
    target = self.directory.parent / CORRUPT_DIR / f"{step}.{int(time.time())}"
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      self.step_dir(step).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")
    self.manager.reload()
    return target


class CheckpointMismatchError(errors.CheckpointError):
  """The workdir's checkpoints are of another model than the config (names or shapes differ)."""


class CheckpointWriteError(errors.Fault):
  """A checkpoint could not be written (a full disk, a lost mount); the message names the step, the path, the
  cause and the checkpoint that is intact."""


class NoReadableCheckpointError(errors.Fault, RuntimeError):
  """Every checkpoint that could serve inference failed to load; the message names each and why."""


def _summary(error: BaseException) -> str:
  """The exception's type and first line: enough to say why in one line (tensorstore's messages run long)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= 300 else text[:300] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _cause(error: BaseException) -> str:
  """What the system said (e.g. "No space left on device (FILE)"), found along the exception chain."""
  seen, e = set(), error
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError) and e.strerror:
      return f"{e.strerror} ({e.filename})" if e.filename else e.strerror
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return _summary(error)


def _warn(message: str, error: BaseException) -> None:
  """One line on stderr (process 0); the traceback behind it only with --verbose / TRANSLOCATOR_VERBOSE=1."""
  if jax.process_index() == 0:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
  if cli.verbose():
    traceback.print_exception(error, file=sys.stderr)


def best_step(workdir, steps) -> int | None:
  """The kept step with the best validation metric (config.train.best_metric, from metrics.jsonl), if any."""
  config_path = epath.Path(workdir) / CONFIG_FILE
  if not config_path.exists():
    return None
  train_cfg = config_from_json(config_path.read_text()).train
  key, mode = train_cfg.best_metric, train_cfg.best_mode
  if not key:
    return None
  scores = {r["step"]: float(r[key]) for r in metrics_writer.read_metrics(workdir)
            if key in r and r["step"] in set(steps)}
  if not scores:
    return None
  return (max if mode == "max" else min)(scores, key=scores.get)


def _find_checkpoint(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(checkpoints directory, step or None=latest) for a workdir, a checkpoints dir or a step dir."""
  if (path / CHECKPOINT_DIR).is_dir():
    return path / CHECKPOINT_DIR, None
  if path.name.isdigit() and (path / "state").exists():
    return path.parent, int(path.name)
  if any(p.name.isdigit() for p in path.iterdir()) if path.is_dir() else False:
    return path, None
  raise FileNotFoundError(f"{path}: not a workdir (no {CHECKPOINT_DIR}/), nor a checkpoint step directory")


def workdir_of(path: str | os.PathLike) -> epath.Path:
  """The training workdir of a workdir, its checkpoints dir or one checkpoint step directory (local or gs://)."""
  ckpt_dir, _ = _find_checkpoint(as_path(path))
  return ckpt_dir.parent


@dataclasses.dataclass
class InferenceCheckpoint:
  """A checkpoint restored for inference: its config, parameters (host numpy arrays) and step."""
  config: ml_collections.ConfigDict
  params: Any
  step: int

  @functools.cached_property
  def fingerprint(self) -> str:
    """params_fingerprint(params), hashed once per load (a gallery and a calibration both check it)."""
    return params_fingerprint(self.params)


def load_for_inference(path: str | pathlib.Path, which: str = "latest") -> InferenceCheckpoint:
  """The checkpoint of a workdir or of one step directory, for inference (infer.session.open opens it for the
  library and the commands): config, parameters as host numpy arrays, and the step (galleries record which
  checkpoint embedded them).

  `which`: 'latest' or 'best' (the best on validation, when the run recorded one). Falls back to older
  checkpoints when the newest one is unreadable.
  """
  path = as_path(path)
  ckpt_dir, step = _find_checkpoint(path)
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)  # as read_only sets it
  manager = ocp.CheckpointManager(ckpt_dir, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
      "data": grain_ckpt.CheckpointHandler()})
  try:
    if step is not None:
      steps = [step]
    elif which == "best" and best_step(ckpt_dir.parent, manager.all_steps()) is not None:
      steps = [best_step(ckpt_dir.parent, manager.all_steps())]
    else:
      steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"{ckpt_dir}: no checkpoints")
    errors = []
    for s in steps:
      try:
        # Only the parameters, as numpy: independent of the topology the run was saved on.
        params_meta = manager.item_metadata(s)["state"].tree["params"]
        item = {"params": params_meta}
        restore_args = {"params": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)}
        restored = manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {s}: {_summary(e)}")
        tried_next = "; trying the previous one" if s != steps[-1] else ""
        _warn(f"checkpoint {ckpt_dir / str(s)} could not be restored ({_summary(e)}){tried_next}", e)
        continue
      # Outside the try: a config the schema refuses is the person's to fix, not an unreadable checkpoint.
      return InferenceCheckpoint(saved_config(restored["config"]), restored["state"]["params"], s)
    raise NoReadableCheckpointError(f"no readable checkpoint in {ckpt_dir} ({'; '.join(errors)})")
  finally:
    manager.close()
