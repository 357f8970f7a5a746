"""Inference over a dataset: the jitted forward (device finishing of uint8 crops, five-crop averaging), the f*
prediction from the geo heads, and a dataset's Predictions. Shared by translocator-eval, training's validation
and Predictor.

Batches are sharded over all devices the same way as in training; the last batch is padded and masked.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from translocator_jax import errors
from translocator_jax.data.pipeline import device_finish
from translocator_jax.data.records import schema
from translocator_jax.geo import hierarchy, metrics
from translocator_jax.geo.predictions import Predictions
from translocator_jax.runtime import sharding as sharding_lib


def geo_heads(heads: Mapping[str, int], partitions: Sequence[Any]) -> list[str]:
  """The geo-cell heads of config.model.heads (coarse -> fine), each checked against its partition's size."""
  used = [h for h in schema.PARTITION_NAMES if h in heads]
  if not used:
    raise errors.ConfigError(f"config.model.heads {list(heads)} has no geo-cell head ({schema.PARTITION_NAMES})")
  part_of = dict(zip(schema.PARTITION_NAMES, partitions))
  for h in used:
    if int(heads[h]) != part_of[h].num_classes:
      raise errors.ConfigError(f"config.model.heads.{h}={heads[h]} but its partition has {part_of[h].num_classes} "
                               "cells")
  return used


def fstar_hierarchy(heads_used: Sequence[str], partitions: Sequence[Any]) -> hierarchy.Hierarchy | None:
  """The f* hierarchy when the model has all three geo heads, else None (the finest head predicts alone)."""
  return hierarchy.Hierarchy.from_partitions(list(partitions)) if len(heads_used) == 3 else None


def _gather(x) -> np.ndarray:
  """All processes' rows of a batch (a global jax array or a host-local numpy array), on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_forward(model, palette: np.ndarray | None = None, embed: bool = False) -> Any:
  """jitted (params, image, seg) -> head name -> probabilities [B, C]; five-crop inputs ([B, 5, ...]) averaged.

  uint8 batches (the evaluation loader's, Predictor's crops) are finished here (data.device_finish; `palette` for
  seg_input='palette'); float32 ones pass through. embed=True also returns the gallery embedding: the model's
  pre-logits (the final fused CLS), averaged over crops and L2-normalised, float32 [B, D].
  """
  finish = device_finish.DeviceFinish(getattr(model, "seg_input", "palette"), palette,
                                      getattr(model, "platform", "cpu"))

  def forward(params, image, seg):
    image, seg = finish(image, seg)
    crops = image.ndim == 5
    if crops:
      b, k = image.shape[:2]
      image = image.reshape((b * k,) + image.shape[2:])
      seg = seg.reshape((b * k,) + seg.shape[2:])
    if embed:
      logits, state = model.apply({"params": params}, image, seg, train=False, mutable=["intermediates"])
    else:
      logits = model.apply({"params": params}, image, seg, train=False)
    probs = {h: jax.nn.softmax(l.astype(jnp.float32), axis=-1) for h, l in logits.items()}
    if crops:
      probs = {h: p.reshape((b, k) + p.shape[1:]).mean(axis=1) for h, p in probs.items()}
    if not embed:
      return probs
    rep = state["intermediates"]["pre_logits"][0].astype(jnp.float32)
    if crops:
      rep = rep.reshape((b, k) + rep.shape[1:]).mean(axis=1)
    return probs, rep / jnp.maximum(jnp.linalg.norm(rep, axis=-1, keepdims=True), 1e-12)

  return jax.jit(forward)


def predict_dataset(model, params, batches: Iterable[Mapping[str, np.ndarray]], *, mesh, partitions,
                    heads: Mapping[str, int], desc: str = "eval",
                    forward=None, total: int | None = None, progress: bool = True,
                    palette: np.ndarray | None = None,
                    embedding_hook: Callable[[Mapping[str, Any], Any], Mapping[str, Any]] | None = None,
                    confidence_radii: Callable[[Mapping[str, Any], Any], Any] | None = None) -> Predictions:
  """Runs the model over padded batches (this process's shard) and predicts coordinates.

  Args:
    model, params: the flax module and its parameters (placed on devices, or host arrays: replicated).
    batches: iterable of batch dicts (image, seg, latlon, mask, index).
    mesh: the device mesh (batches are split over its 'data' axis).
    partitions: [coarse, middle, fine] geo.cells.Partition of the training set.
    heads: config.model.heads (which partition heads the model has).
    palette: [K, 3] uint8 colours, to finish uint8 class maps (seg_input='palette') when `forward` is not given.
    embedding_hook: (probs, embeddings [B, D]) -> name -> per-row values [B, ...] of the global batch (gallery
      refinement, similarity to the gallery). A value named 'refined' [B, 2] becomes the method 'refined';
      the others go to Predictions.extras.
    confidence_radii: (probs, main predicted latlon [B, 2]) -> [B, 2] radius50/radius90 km (calibration), kept
      as extras radius50_km and radius90_km.
  """
  forward = forward or make_forward(model, palette, embed=embedding_hook is not None)
  heads_used = geo_heads(heads, partitions)
  part_of = dict(zip(schema.PARTITION_NAMES, partitions))
  hier = fstar_hierarchy(heads_used, partitions)
  use_fstar = hier is not None
  if any(isinstance(x, np.ndarray) for x in jax.tree.leaves(params)):  # host params: place them as in training
    params = jax.device_put(params, sharding_lib.state_shardings(params, mesh))
  out = {"index": [], "latlon": [], "mask": [], "fine": []}
  preds = {m: [] for m in (["fstar"] if use_fstar else []) + heads_used}
  extras: dict[str, list] = {}
  for batch in tqdm.tqdm(batches, desc=desc, total=total, leave=False,
                         disable=jax.process_index() != 0 or not progress):
    dev = sharding_lib.put_batch({"image": batch["image"], "seg": batch["seg"]}, mesh)
    probs = forward(params, dev["image"], dev["seg"])
    if embedding_hook is not None:
      probs, emb = probs
      for name, value in embedding_hook(probs, emb).items():
        (preds if name == "refined" else extras).setdefault(name, []).append(_gather(value))
    if use_fstar:
      classes, _, latlon = hierarchy.fstar_topk(hier, *(probs[level] for level in hierarchy.LEVELS), 1)
      preds["fstar"].append(_gather(latlon)[:, 0])
      out["fine"].append(_gather(classes)[:, 0])
      main_latlon = latlon[:, 0]
    for h in heads_used:
      cls = jnp.argmax(probs[h], axis=-1)
      preds[h].append(np.asarray(part_of[h].latlon_mean, np.float32)[_gather(cls)])
      if not use_fstar and h == heads_used[-1]:
        out["fine"].append(_gather(cls))
        main_latlon = jnp.take(jnp.asarray(part_of[h].latlon_mean, jnp.float32), cls, axis=0)
    if confidence_radii is not None:
      radii = _gather(confidence_radii(probs, main_latlon))
      extras.setdefault("radius50_km", []).append(radii[:, 0])
      extras.setdefault("radius90_km", []).append(radii[:, 1])
    for key in ("index", "latlon", "mask"):
      out[key].append(_gather(np.asarray(batch[key])))
  if not out["index"]:
    raise errors.DataError(f"{desc}: no batches (the split holds no records)")
  mask = np.concatenate(out["mask"]).astype(bool)
  index = np.concatenate(out["index"])[mask]
  order = np.argsort(index, kind="stable")
  by_method = {m: np.concatenate(v)[mask][order].astype(np.float32) for m, v in preds.items()}
  by_extra = {name: np.concatenate(v)[mask][order] for name, v in extras.items()}
  main = "fstar" if use_fstar else heads_used[-1]  # f*, else the finest head
  return Predictions(
      true_latlon=np.concatenate(out["latlon"])[mask][order].astype(np.float32),
      pred_latlon=by_method.pop(main), method=main, others=by_method,
      index=index[order].astype(np.int64),
      fine_class=np.concatenate(out["fine"])[mask][order].astype(np.int32), extras=by_extra,
  )


def tables_from_predictions(preds: Predictions) -> dict[str, dict[str, float]]:
  """method -> accuracy table (acc_*km, median_km, mean_km, geoscore, n)."""
  return {m: metrics.accuracy_table(p, preds.true_latlon) for m, p in preds.methods().items()}
