"""A trained checkpoint opened for inference: the one place a checkpoint is restored to predict with.

  run = session.open("runs/earth_demo")                  # a workdir (its latest checkpoint) or one step directory
  run = session.open("runs/earth_demo", which="best", data_dir="~/tensorflow_datasets")
  info, partitions = run.trained_on()                    # the partitions (and palette) the model was trained with

Evaluation (eval.benchmark), the gallery (infer.gallery), validation queries (infer.queries, which calibration and
refinement's tuning read) and Predictor all open their checkpoint here. Each of them also takes an open Session in
place of the path, so a caller that runs several of them (the demo) restores the checkpoint once.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from translocator_jax import errors, models
from translocator_jax.data import registry
from translocator_jax.runtime import checkpoints, config_schema, sharding as sharding_lib


@dataclasses.dataclass
class Session:
  """A checkpoint restored for inference: its parameters (host numpy arrays), the run's config and the step."""
  path: Any                              # as given: a training workdir, its checkpoints dir or one step directory
  checkpoint: checkpoints.InferenceCheckpoint

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.checkpoint.config

  @property
  def params(self) -> Any:
    return self.checkpoint.params

  @property
  def step(self) -> int:
    return self.checkpoint.step

  @property
  def fingerprint(self) -> str:
    """The parameters' fingerprint (hashed once per session): galleries and calibrations are checked against it."""
    return self.checkpoint.fingerprint

  def trained_on(self) -> tuple[registry.DatasetInfo, list[Any]]:
    """trained_on(config) of this run."""
    return trained_on(self.config)

  def mesh(self) -> jax.sharding.Mesh:
    """The mesh inference runs on (runtime.sharding.inference_axes: every device, whatever the run trained on)."""
    return sharding_lib.make_mesh(sharding_lib.inference_axes(self.config))

  def model(self, mesh: jax.sharding.Mesh | None = None):
    """The model of config.model, its choices made for the devices of `mesh` (None: the process's own)."""
    return models.build_model(self.config.model, sharding_lib.platform(mesh) if mesh is not None else None)

  def batch_size(self, batch_size: int | None = None) -> int:
    """A global batch (default: config.eval.batch_size) rounded down to a multiple of the devices, at least one
    example a device."""
    batch_size = int(batch_size or self.config.eval.batch_size)
    return max(jax.device_count(), batch_size // jax.device_count() * jax.device_count())


def open(path: "str | os.PathLike | Session", which: str = "latest", *,  # pylint: disable=redefined-builtin
         data_dir: str | os.PathLike | None = None) -> Session:
  """The checkpoint of a workdir ('latest' or 'best' on validation; an unreadable newest one falls back to the
  one before) or of one step directory, restored for inference; data_dir (when given) replaces
  config.data.data_dir, where the datasets are looked for.

  An open Session is returned as it is (which is then ignored), with data_dir applied.
  """
  run = path if isinstance(path, Session) else Session(path, checkpoints.load_for_inference(path, which=which))
  config_schema.complete(run.config)  # a Session built in Python around a config of its own
  if data_dir:
    run.config.data.data_dir = str(data_dir)
  return run


def trained_on(config: ml_collections.ConfigDict) -> tuple[registry.DatasetInfo, list[Any]]:
  """(the training set config.data.train, its [coarse, middle, fine] partitions): the partitions and segmentation
  palette the model was trained with. The training records themselves need not be on disk (the Earth-patches set is
  built if it is not); errors.UserError when the set has no partitions to predict with."""
  info = registry.dataset_info(config, config.data.train, need_records=False)
  partitions = registry.load_partitions(info)
  if partitions is None:
    raise errors.UserError(f"the training set {config.data.train!r} has no partitions to predict with")
  return info, partitions
