"""The training loop: init or resume, step, log, validate, checkpoint, stop on NaN or on a preemption signal."""
from __future__ import annotations

import logging
import math
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from translocator_jax import errors, models
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.data.records import schema
from translocator_jax.infer import inference
from translocator_jax.models import load as load_lib
from translocator_jax.runtime import checkpoints as ckpt_lib
from translocator_jax.runtime import config_schema
from translocator_jax.runtime import metrics_writer
from translocator_jax.runtime import sharding as sharding_lib
from translocator_jax.runtime import workdir_lock
from translocator_jax.train import bad_records as bad_records_lib
from translocator_jax.train import optimizer as optim_lib
from translocator_jax.train import preemption
from translocator_jax.train import step as step_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient went NaN / inf; the message names the step and the checkpoint to go back to."""


def _log_line(step: int, total: int, m: dict[str, float], images_per_s: float, eta_s: float) -> str:
  eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0))) if math.isfinite(eta_s) else "?"
  return (f"step {step}/{total} loss {m['loss']:.4f} lr {m['learning_rate']:.3g} "
          f"{images_per_s:.1f} img/s ETA {eta}")


def build_validation(config: ml_collections.ConfigDict, info: registry.DatasetInfo, model, mesh, partitions):
  """A function params -> validation metrics dict (val_acc_750km, ...), or None when the run has none."""
  if not config.train.eval_every:
    return None
  found = registry.validation_set(config, info)
  if found is None:
    return None
  info, split = found
  inputs.check_records(info, split)  # a damaged shard refused now, not at the first validation
  if jax.process_index() == 0:
    print(f"validation: {info.name}/{split} every {config.train.eval_every} steps", flush=True)
  forward = inference.make_forward(model, info.palette)  # compiled once, reused at every validation

  def validate(params) -> dict[str, float]:
    batches, _ = inputs.eval_batches(config, info, split, config.eval.batch_size, config.eval.tta)
    preds = inference.predict_dataset(model, params, batches, mesh=mesh, partitions=partitions,
                                      heads=config.model.heads, desc=f"validate {info.name}/{split}",
                                      forward=forward, progress=config.train.progress_bar)
    tables = inference.tables_from_predictions(preds)
    best = tables.get("fstar") or next(iter(tables.values()))
    return {f"val_{k}": float(v) for k, v in best.items() if k != "n"}

  return validate


def resolve_head_sizes(config: ml_collections.ConfigDict, partitions) -> None:
  """Head sizes given as 0 take the partition's number of cells (datasets whose partitions are built on use)."""
  for name, p in zip(schema.PARTITION_NAMES, partitions or []):
    if name in config.model.heads and not config.model.heads[name]:
      config.model.heads[name] = int(p.num_classes)
  unresolved = [h for h, n in config.model.heads.items() if not n]
  if unresolved:
    raise errors.ConfigError(f"config.model.heads {unresolved} have size 0 and the training set gives no partition "
                             "for them")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains config in workdir (resuming from its newest readable checkpoint); returns a summary dict.

  Refuses (WorkdirLockedError) a workdir another trainer is using; raises CheckpointWriteError when a checkpoint
  cannot be written (the previous one stays intact, and rerunning resumes from it).

  SIGTERM / SIGINT during the steps (train/preemption.py) end the step in progress, which is then saved like a
  periodic checkpoint; once it is written the loop prints `preempted at step N: checkpoint saved` on stderr and
  raises preemption.TrainingPreempted (no summary, no final validation): rerunning resumes from step N.
  """
  config = config_schema.complete(config)  # a config built in Python: filled and checked as a command's is
  workdir = ckpt_lib.as_path(workdir)  # local or gs://
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.hold(workdir):  # before anything is written there (config.json, checkpoints)
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  total = config.train.total_steps
  global_batch = config.data.batch_size
  mesh = sharding_lib.make_mesh(sharding_lib.mesh_axes(config))
  sharding_lib.local_batch_size(global_batch)  # validates divisibility
  is_main = jax.process_index() == 0

  info = registry.dataset_info(config, config.data.train)
  inputs.check_records(info, config.data.train_split)  # before the model is built
  if info.num_seg_classes and config.model.seg_input == "classes":
    if config.model.num_seg_classes < info.num_seg_classes:
      raise errors.ConfigError(f"config.model.num_seg_classes={config.model.num_seg_classes} < the dataset's "
                               f"{info.num_seg_classes} segmentation classes")
  partitions = registry.load_partitions(info)
  resolve_head_sizes(config, partitions)
  ckpt_lib.write_config(workdir, config)
  cell_latlon = None
  if partitions is not None:
    inference.geo_heads(config.model.heads, partitions)  # each head's size is its partition's
    cell_latlon = {name: np.asarray(p.latlon_mean, np.float32)
                   for name, p in zip(schema.PARTITION_NAMES, partitions) if name in config.model.heads}

  model = models.build_model(config.model, sharding_lib.platform(mesh))
  tx, schedule = optim_lib.make_optimizer(config.optim, total)
  rng = jax.random.key(config.seed)
  fsdp_min = config.train.fsdp_min_size
  params = step_lib.init_params(model, config.model, rng, mesh, fsdp_min)
  pretrained = config.init.pretrained
  if pretrained:
    shardings = jax.tree.map(lambda x: x.sharding, params)
    host_params, report = load_lib.load_pretrained(jax.device_get(params), pretrained, config.model)
    params = jax.device_put(host_params, shardings)
    if is_main:
      print(report.summary() if hasattr(report, "summary") else report, flush=True)
  state, state_shardings = step_lib.create_state(params, tx, mesh, fsdp_min)
  del params

  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric,
      best_mode=config.train.best_mode, async_save=config.train.async_checkpoints)
  iterator = inputs.train_iterator(config, info, global_batch)
  bad_records = bad_records_lib.BadRecords(
      workdir, config.data.max_bad_records, inputs.record_locator(config, info))
  start, restored = checkpointer.restore_latest(step_lib.abstract_state(state_shardings, state), iterator)
  if restored is not None:
    state = restored
    if is_main:
      print(f"resumed from {checkpointer.step_dir(start)} (step {start})", flush=True)
  start = start or 0
  last_saved = start if restored is not None else None

  train_step = step_lib.make_train_step(model, tx, config, schedule=schedule, mesh=mesh,
                                        state_shardings=state_shardings, cell_latlon=cell_latlon,
                                        palette=info.palette)
  validate = build_validation(config, info, model, mesh, partitions)
  writer = metrics_writer.MetricWriter(workdir, tensorboard=config.train.tensorboard)
  log_every = max(config.train.log_every, 1)
  ckpt_every = config.train.ckpt_every
  eval_every = config.train.eval_every
  bar = tqdm.tqdm(total=total, initial=start, desc="train", disable=not is_main or not config.train.progress_bar,
                  dynamic_ncols=True)

  def checkpoint_hint() -> str:
    if last_saved is None:
      return "no checkpoint was saved yet: restart from scratch (lower the learning rate?)"
    return f"go back to checkpoint step {last_saved} ({checkpointer.step_dir(last_saved)})"

  def host_metrics(step: int, m) -> dict[str, float]:
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
      raise NonFiniteLossError(f"loss={m['loss']} grad_norm={m['grad_norm']} at step {step}: stopping; "
                               f"{checkpoint_hint()}")
    return m

  losses = {}
  t_mark, step_mark = time.time(), start
  pending = None  # (step, device metrics) of the previous step: read one step late to keep the device busy
  last_metrics = {}
  preempted_at = bad_stop_at = None
  # Signals are caught from here (before it there is nothing to lose) until the last save is written.
  stop = preemption.StopSignals()
  with stop:
    try:
      for step in range(start + 1, total + 1):
        local = next(iterator)
        bad_records.note(step, local)  # rows it could not read or decode are masked: named here, trained past
        batch = sharding_lib.put_batch({k: local[k] for k in step_lib.STEP_KEYS if k in local}, mesh)
        state, metrics = train_step(state, batch)
        if pending is not None:
          prev_step, prev = pending
          last_metrics = host_metrics(prev_step, prev)
          losses[prev_step] = last_metrics["loss"]
        pending = (step, metrics)
        bar.update(1)
        stop_now = stop.agreed(step)  # asked on every host at every step: all of them stop at the same one
        too_many_bad = bad_records.agreed(step)
        save_now = stop_now or too_many_bad or ckpt_every and step % ckpt_every == 0 or step == total
        log_now = step % log_every == 0 or step == total
        if save_now or log_now:
          last_metrics = host_metrics(step, metrics)
          losses[step] = last_metrics["loss"]
          pending = None
        if log_now:
          dt = time.time() - t_mark
          ips = (step - step_mark) * global_batch / max(dt, 1e-9)
          eta = (total - step) * dt / max(step - step_mark, 1)
          t_mark, step_mark = time.time(), step
          writer.write(step, {**last_metrics, "images_per_s": ips}, prefix="train/")
          bar.set_postfix(loss=f"{last_metrics['loss']:.4f}", img_s=f"{ips:.1f}")
          if is_main and not config.train.progress_bar:
            print(_log_line(step, total, last_metrics, ips, eta), flush=True)
        val = None
        # Not when stopping: a validation pass can outlast a preemption notice's grace period.
        if validate is not None and not stop_now and not too_many_bad and (step % eval_every == 0 or step == total):
          val = validate(state["params"])
          writer.write(step, val, prefix="val/")
          if is_main:
            bar.write(f"step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in val.items()))
        if save_now:
          fingerprint = ckpt_lib.params_fingerprint(state["params"])
          checkpointer.save(step, state, iterator, config, metrics=val)
          last_saved = step
          writer.write(step, {"params_fingerprint": fingerprint, "checkpoint": str(checkpointer.step_dir(step))})
          writer.flush()
        if stop_now:
          preempted_at = step
          break
        if too_many_bad:
          bad_stop_at = step
          break
      if pending is not None:
        last_metrics = host_metrics(*pending)
        losses[pending[0]] = last_metrics["loss"]
    except NonFiniteLossError as e:
      if is_main:
        bar.write(f"ERROR: {e}")
      raise
    finally:
      bar.close()
      try:
        checkpointer.close()  # waits for the last save: a failed write surfaces here
      finally:
        writer.close()
    if preempted_at is not None:  # the save is written (close() waited for it); signals are still caught here
      if is_main:
        print(f"preempted at step {preempted_at}: checkpoint saved", file=sys.stderr, flush=True)
      raise preemption.TrainingPreempted(preempted_at, stop.signum, checkpointer.step_dir(preempted_at))
    if bad_stop_at is not None:  # saved like a preemption's step; the error is the run's one line
      raise bad_records.too_many(bad_stop_at, checkpointer.step_dir(bad_stop_at))
  saved_steps = checkpointer.all_steps()

  fingerprint = ckpt_lib.params_fingerprint(state["params"])
  summary = {"workdir": str(workdir), "steps": total, "resumed_from": start, "final_loss": last_metrics.get("loss"),
             "params_fingerprint": fingerprint, "checkpoints": saved_steps,
             "losses": [losses[k] for k in sorted(losses)]}
  if is_main:
    print(f"done: {total} steps, final loss {summary['final_loss']}, checkpoints {summary['checkpoints']} in "
          f"{checkpointer.directory}, params fingerprint {fingerprint[:16]}", flush=True)
  return summary
