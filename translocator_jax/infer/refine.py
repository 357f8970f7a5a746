"""Gallery refinement of f*: from the best cells to the training photo the evidence agrees on.

f* answers with a cell's mean training coordinate, so it is never closer than a cell allows. Refinement keeps f*'s
cell probabilities and adds retrieval (PIGEON-style within-cell refinement):
  1. the top `top_cells` fine cells of f* (renormalised over themselves) are the only candidates (a training
     photo in no fine cell, where the partition dropped its region, is never a candidate);
  2. every gallery photo of those cells is scored  log p(its cell) + similarity / temperature  and the best
     `neighbours` are kept (infer.search, sharded over the mesh);
  3. the evidence agrees at a geographic mode: with w = softmax of the neighbours' scores, the neighbour j
     maximising  sum_k w_k [d(j, k) < radius_km] + fine_weight * sum_k w_k [d(j, k) < FINE_KM]  (the heaviest
     cluster within radius_km and, by fine_weight, the heaviest 1-km cluster) is the matched photo, and the answer
     is the w-weighted mean location of the neighbours within FINE_KM of it (the cluster's centre lies nearer a new
     photo of that cluster than any one member does). Chosen on the Earth demo's validation split against the top-1
     neighbour and a weighted medoid; see README.
The settings are tuned on the validation split (`tune`), never on test; a prediction also names the photo it
matched and its similarity. translocator-gallery runs, after embedding the gallery, `train_projection` (the
geo-aware projection, infer.projection) and `tune_on_validation` (tune on the run's validation queries, saved with
the gallery).
"""
from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from translocator_jax import errors
from translocator_jax.geo import distance, hierarchy as hierarchy_lib, metrics
from translocator_jax.infer import gallery as gallery_lib, projection as projection_lib, queries, search as search_lib
from translocator_jax.infer.gallery import Gallery
from translocator_jax.runtime import config_schema

REFINE_MODES = config_schema.REFINE_MODES  # config.eval.refine's choices
FINE_KM = 1.0
# The validation grid of `tune`.
GRID = {"features": ("plain", "projected"), "top_cells": (5, 20), "temperature": (0.02, 0.05, 0.1),
        "neighbours": (20, 50, 100, 200), "radius_km": (1.0, 5.0, 25.0), "fine_weight": (0.5, 1.0, 2.0)}
FEATURES = ("plain", "projected")


@dataclasses.dataclass(frozen=True)
class RefineSettings:
  top_cells: int = 20          # K: f*'s best fine cells searched
  temperature: float = 0.05    # similarity / temperature beside log p(cell)
  neighbours: int = 50         # gallery photos that vote
  radius_km: float = 25.0      # the agreement radius
  fine_weight: float = 1.0     # weight of the 1-km cluster beside the radius_km one
  features: str = "plain"      # 'plain': centred pre-logits; 'projected': the geo-aware projection

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any] | None) -> "RefineSettings":
    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise errors.ConfigError(f"config.eval.gallery: unknown setting(s) {unknown}; known: "
                               f"{[f.name for f in dataclasses.fields(cls)]}")
    settings = cls(**{k: type(getattr(cls, k))(v) for k, v in values.items()})
    if settings.features not in FEATURES:
      raise errors.ConfigError(f"config.eval.gallery.features={settings.features!r}; expected one of {FEATURES}")
    return settings


@jax.jit(static_argnames=("top_cells",))
def top_cell_logp(cell_probs, top_cells: int):
  """[B, C] log-probabilities renormalised over each row's top cells, -inf elsewhere."""
  top, idx = jax.lax.top_k(cell_probs, top_cells)
  logp = jnp.log(jnp.maximum(top, 1e-30)) - jnp.log(jnp.maximum(top.sum(axis=1, keepdims=True), 1e-30))
  out = jnp.full(cell_probs.shape, -jnp.inf, jnp.float32)
  return jax.vmap(lambda o, i, v: o.at[i].set(v))(out, idx, logp)


@jax.jit(static_argnames=("neighbours",))
def agreement_pick(scores, latlon, radius_km, neighbours: int, fine_weight):
  """(index into the first `neighbours` columns of each row's geographic mode, [B, 2] the score-weighted mean
  location of the neighbours within FINE_KM of it); scores [B, n] best first, latlon [B, n, 2]."""
  scores, latlon = scores[:, :neighbours], latlon[:, :neighbours]
  w = jax.nn.softmax(jnp.where(jnp.isfinite(scores), scores, -1e30), axis=1)
  d = distance.haversine_km(latlon[:, :, None, :], latlon[:, None, :, :])  # [B, n, n]
  support = ((d < radius_km) * w[:, None, :]).sum(-1) + fine_weight * ((d < FINE_KM) * w[:, None, :]).sum(-1)
  pick = jnp.argmax(support, axis=1)  # ties: the better-scored neighbour
  # The cluster's centre lies nearer a new photo of that cluster than any one member does.
  near = jnp.take_along_axis(d, pick[:, None, None], axis=1)[:, 0] < FINE_KM  # [B, n], the pick included
  cluster_w = jnp.where(near, w, 0.0)
  lat, lon = jnp.deg2rad(latlon[..., 0]), jnp.deg2rad(latlon[..., 1])
  xyz = jnp.stack([jnp.cos(lat) * jnp.cos(lon), jnp.cos(lat) * jnp.sin(lon), jnp.sin(lat)], -1)
  mean = (cluster_w[..., None] * xyz).sum(1)
  point = jnp.stack([jnp.rad2deg(jnp.arctan2(mean[:, 2], jnp.hypot(mean[:, 0], mean[:, 1]))),
                     jnp.rad2deg(jnp.arctan2(mean[:, 1], mean[:, 0]))], -1)
  return pick, point


class Refiner:
  """Refines f* with a gallery placed on the mesh; `__call__` is an inference.predict_dataset embedding hook."""

  def __init__(self, gallery: Gallery, partitions: Sequence[Any], settings: RefineSettings | None = None, *,
               mesh=None, refine: bool = True, projection: projection_lib.Projection | None = None):
    self.gallery = gallery
    self.settings = settings or RefineSettings()
    self.enabled = refine  # False: only each query's highest similarity to the gallery
    self.projection = projection
    if self.settings.features == "projected" and projection is None:
      raise errors.ConfigError("config.eval.gallery.features='projected', but the gallery has no projection (built "
                               "with --no-projection, or too few photos to train one)")
    self.hierarchy = hierarchy_lib.Hierarchy.from_partitions(list(partitions))
    cells = np.where(gallery.fine_cell >= 0, gallery.fine_cell, partitions[-1].assign(gallery.latlon))
    # Plain similarity is the cosine after removing the gallery's mean: raw pre-logits share a large common
    # direction (their cosines crowd near 1), which would make every photo look like a near-duplicate.
    emb = gallery.embeddings.astype(np.float32)
    self.mean = jnp.asarray(emb.mean(0) if len(emb) else np.zeros(emb.shape[1:], np.float32))
    self.devices = {"plain": search_lib.put_gallery(np.asarray(_centre(jnp.asarray(emb), self.mean)), cells,
                                                    mesh=mesh)}
    if projection is not None:
      self.devices["projected"] = search_lib.put_gallery(np.asarray(projection(emb)), cells, mesh=mesh)
    self.device_gallery = self.devices["plain"]
    self.latlon = jnp.asarray(gallery.latlon, jnp.float32)
    # The class maps on the device once, not per query batch.
    self._device_hierarchy = dataclasses.replace(self.hierarchy,
                                                 fine_to_middle=jnp.asarray(self.hierarchy.fine_to_middle),
                                                 fine_to_coarse=jnp.asarray(self.hierarchy.fine_to_coarse))

  def cell_probs(self, probs: Mapping[str, Any]):
    return hierarchy_lib.cell_probabilities(probs, self._device_hierarchy)

  def features(self, emb, kind: str):
    """Queries' search features: centred and normalised pre-logits, or their projection."""
    if kind == "projected":
      return self.projection(emb)
    return _centre(jnp.asarray(emb, jnp.float32), self.mean)

  def neighbours(self, cell_probs, emb, top_cells: int, temperature: float, k: int, features: str = "plain"):
    """(scores [B, k], rows [B, k]) of the best gallery photos within each row's top cells."""
    logp = top_cell_logp(cell_probs, int(min(top_cells, cell_probs.shape[1])))
    return search_lib.search(self.devices[features], self.features(emb, features), int(min(k, len(self.gallery))),
                             cell_logp=logp, temperature=temperature)

  def refine(self, probs: Mapping[str, Any], emb, settings: RefineSettings | None = None) -> dict[str, Any]:
    s = settings or self.settings
    cell_probs = self.cell_probs(probs)
    scores, rows = self.neighbours(cell_probs, emb, s.top_cells, s.temperature, s.neighbours, s.features)
    return self._answer(cell_probs, emb, scores, rows, s.neighbours, s.radius_km, s.fine_weight)

  def _answer(self, cell_probs, emb, scores, rows, neighbours: int, radius_km: float,
              fine_weight: float) -> dict[str, Any]:
    latlon = jnp.take(self.latlon, jnp.maximum(rows, 0), axis=0)
    pick, point = agreement_pick(scores, latlon, jnp.float32(radius_km), int(min(neighbours, scores.shape[1])),
                                 jnp.float32(fine_weight))
    row = jnp.take_along_axis(rows, pick[:, None], axis=1)[:, 0]
    found = jnp.isfinite(jnp.take_along_axis(scores, pick[:, None], axis=1)[:, 0])
    fallback = jnp.take(jnp.asarray(self.hierarchy.fine_latlon), jnp.argmax(cell_probs, axis=1), axis=0)
    refined = jnp.where(found[:, None], point, fallback)
    matched_emb = jnp.take(self.device_gallery.embeddings, jnp.maximum(row, 0), axis=0)
    sim = jnp.where(found, jnp.sum(matched_emb * self.features(emb, "plain"), axis=-1), jnp.nan)
    return {"refined": refined, "matched_row": jnp.where(found, row, -1), "matched_similarity": sim}

  def nearest_similarity(self, emb) -> jax.Array:
    """[B] each query's highest similarity to any gallery photo (near-duplicate evidence)."""
    scores, _ = search_lib.search(self.device_gallery, self.features(emb, "plain"), 1)
    return scores[:, 0]

  def __call__(self, probs, emb) -> dict[str, Any]:
    out = self.refine(probs, emb) if self.enabled else {}
    out["max_gallery_similarity"] = self.nearest_similarity(emb)
    return out


def tune(refiner: Refiner, probs: Mapping[str, np.ndarray], emb: np.ndarray, true_latlon: np.ndarray,
         grid: Mapping[str, Sequence] = GRID, batch: int = 256) -> tuple[RefineSettings, list[dict[str, Any]]]:
  """Chooses the settings on validation queries (their head probabilities, embeddings, true coordinates).

  The choice follows what refinement is for: the most photos within 1 + 25 km, among the settings that lose at
  most one point to f* within 750 and 2500 km and have a lower median error (else the best such sum overall).
  Returns (settings, one record per tried combination).
  """
  true_latlon = np.asarray(true_latlon, np.float32)
  n = len(true_latlon)
  fstar_latlon = np.concatenate([np.asarray(hierarchy_lib.fstar_topk(
      refiner.hierarchy, *(probs[h][s:s + batch] for h in hierarchy_lib.LEVELS), 1)[2])[:, 0]
      for s in range(0, n, batch)])
  base = metrics.accuracy_table(fstar_latlon, true_latlon)
  k_max = max(grid["neighbours"])
  records = []
  kinds = [f for f in grid["features"] if f in refiner.devices]
  for features, top_cells, temperature in itertools.product(kinds, grid["top_cells"], grid["temperature"]):
    found = []
    for s in range(0, n, batch):
      p = {h: jnp.asarray(probs[h][s:s + batch]) for h in hierarchy_lib.LEVELS}
      e = jnp.asarray(emb[s:s + batch])
      cp = refiner.cell_probs(p)
      found.append((cp, e) + refiner.neighbours(cp, e, top_cells, temperature, k_max, features))
    fine_weights = grid.get("fine_weight", (RefineSettings.fine_weight,))
    for neighbours, radius_km, fine_weight in itertools.product(grid["neighbours"], grid["radius_km"], fine_weights):
      pred = np.concatenate([np.asarray(refiner._answer(cp, e, sc, rows, neighbours, radius_km, fine_weight)[
          "refined"]) for cp, e, sc, rows in found])
      table = metrics.accuracy_table(pred, true_latlon)
      keeps = (table["acc_750km"] >= base["acc_750km"] - 0.01 and table["acc_2500km"] >= base["acc_2500km"] - 0.01
               and table["median_km"] < base["median_km"])
      records.append({"features": features, "top_cells": top_cells, "temperature": temperature,
                      "neighbours": neighbours, "radius_km": radius_km, "fine_weight": fine_weight,
                      "keeps_fstar": bool(keeps), **table})
  pool = [r for r in records if r["keeps_fstar"]] or records
  best = max(pool, key=lambda r: r["acc_1km"] + r["acc_25km"])
  return RefineSettings(**{f.name: best[f.name] for f in dataclasses.fields(RefineSettings)}), records


@jax.jit
def _centre(emb, mean):
  x = emb - mean
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_refiner(path, ckpt, partitions, *, refine_mode: str, gallery_dir=None,
                 mesh=None) -> Refiner | None:
  """The gallery of this checkpoint (refused if it belongs to another) as a refiner, with its tuned settings;
  None when neither refinement nor a gallery was asked for. ckpt: a session.Session (or anything with its config,
  step and fingerprint)."""
  if refine_mode not in REFINE_MODES:
    raise errors.ConfigError(f"config.eval.refine={refine_mode!r}; expected one of {REFINE_MODES}")
  if refine_mode == "none" and not gallery_dir:
    return None
  root = gallery_lib.gallery_dir(path, gallery_dir)
  expect = {"step": ckpt.step, "params_fingerprint": ckpt.fingerprint}
  gallery = gallery_lib.load(root, expect=expect)
  tuned = {k: v for k, v in gallery.meta.get("refine", {}).items() if k != "tuned_on"}
  if tuned:
    tuned.setdefault("fine_weight", 0.5)  # galleries tuned before the weight was: their rule had it fixed at 0.5
  settings = RefineSettings.from_mapping(tuned or ckpt.config.eval.gallery)
  proj_path = projection_lib.path_in(root)
  proj = projection_lib.Projection.load(proj_path) if proj_path.exists() else None
  return Refiner(gallery, partitions, settings, mesh=mesh, refine=refine_mode == "gallery", projection=proj)


def train_projection(root, **kwargs) -> pathlib.Path:
  """Trains the geo-aware projection on a built gallery (once: an existing projection.npz is kept)."""
  path = projection_lib.path_in(root)
  if jax.process_index() == 0 and not path.exists():
    gallery = gallery_lib.load(root)
    try:
      projection_lib.train(gallery.embeddings, gallery.latlon, **kwargs).save(path)
      print(f"geo projection: {path}", flush=True)
    except projection_lib.TooFewPairsError as e:
      print(f"no geo projection: {e}; refinement uses the plain features", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gallery: projection")
  return path


def tune_on_validation(path, root, *, which: str = "latest", data_dir: str | None = None,
                       batch_size: int | None = None) -> tuple[RefineSettings, dict]:
  """Chooses refinement's settings on the run's validation set and saves them with the gallery. `path`: a workdir,
  a step directory or an open session.Session."""
  preds, config, partitions, split, _ = queries.split_queries(path, which=which, data_dir=data_dir,
                                                              batch_size=batch_size)
  gallery = gallery_lib.load(root)
  proj_path = projection_lib.path_in(root)
  refiner = Refiner(gallery, partitions,
                    projection=projection_lib.Projection.load(proj_path) if proj_path.exists() else None)
  probs = {h: preds.extras[f"p_{h}"] for h in hierarchy_lib.LEVELS}
  settings, records = tune(refiner, probs, preds.extras["embedding"], preds.true_latlon)
  gallery_lib.save_refine_settings(root, {**settings.__dict__, "tuned_on": split}, config)
  fstar = metrics.accuracy_table(preds.pred_latlon, preds.true_latlon)
  chosen = next(r for r in records if all(r[k] == v for k, v in settings.__dict__.items()))
  return settings, {"split": split, "n": len(preds.true_latlon), "fstar": fstar, "refined": chosen,
                    "tried": len(records)}
