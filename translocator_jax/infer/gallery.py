"""A gallery: every training image embedded by one checkpoint, for retrieval (refinement, near-duplicates).

The embedding is the model's pre-logits (the final fused CLS, averaged over the two streams' final norms) of the
evaluation centre crop, L2-normalised: what the geo heads read, so no extra training is needed.

On disk, under GALLERY_DIR (default WORKDIR/gallery):
  parts/p{process}-of-{count}/part-{k}.npz   one file per `part_batches` batches of a process's shard:
                                             embedding float16 [n, D], latlon float32 [n, 2], fine_cell int32 [n],
                                             index int64 [n] (source position), image_id text [n]
  parts/p{process}-of-{count}/identity.json  the checkpoint and data the parts come from
  meta.json                                  written last: identity, rows, dimension, the parts (and, once tuned,
                                             the refinement's settings)
A build that stops resumes from its first missing part; parts of another checkpoint or dataset are refused. Every
process embeds its own shard on its own devices, as in evaluation. Files are plain .npz read with
allow_pickle=False.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from translocator_jax import errors
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.infer import inference, session
from translocator_jax.runtime import checkpoints, sharding as sharding_lib

GALLERY_DIRNAME = "gallery"
META = "meta.json"
IDENTITY_KEYS = ("step", "params_fingerprint", "dataset", "split", "crop_fraction", "embedding")
EMBEDDING = "pre_logits"


class GalleryMismatchError(errors.UserError):
  """A gallery that belongs to another checkpoint (or dataset, split, crop)."""


@dataclasses.dataclass
class Gallery:
  """A loaded gallery, rows in source order."""
  embeddings: np.ndarray   # float16 [N, D], L2-normalised
  latlon: np.ndarray       # float32 [N, 2]
  fine_cell: np.ndarray    # int32 [N] the row's fine cell (-1: none)
  index: np.ndarray        # int64 [N] position in the source split
  image_ids: np.ndarray    # str [N]
  meta: dict[str, Any]

  def __len__(self) -> int:
    return len(self.index)


def gallery_dir(workdir, gallery: str | None = None) -> pathlib.Path:
  return pathlib.Path(gallery) if gallery else pathlib.Path(str(checkpoints.workdir_of(workdir))) / GALLERY_DIRNAME


def identity(config: ml_collections.ConfigDict, step: int, fingerprint: str, dataset: str, split: str
             ) -> dict[str, Any]:
  """What a gallery's rows depend on: the checkpoint (step, params), the images (dataset, split, crop)."""
  return {"step": int(step), "params_fingerprint": fingerprint, "dataset": dataset, "split": split,
          "crop_fraction": config.eval.crop_fraction, "embedding": EMBEDDING}


def check_identity(where, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
  """Raises GalleryMismatchError naming the first difference between a gallery and what it is used with."""
  for key in IDENTITY_KEYS:
    if key in expected and found.get(key) != expected[key]:
      raise GalleryMismatchError(
          f"{where}: this gallery was built with {key}={found.get(key)!r} (checkpoint step {found.get('step')}, "
          f"params {str(found.get('params_fingerprint'))[:12]}), not {expected[key]!r} (checkpoint step "
          f"{expected.get('step')}, params {str(expected.get('params_fingerprint'))[:12]}); rebuild it with "
          "translocator-gallery --overwrite")


def _part_dir(root: pathlib.Path, process: int, count: int) -> pathlib.Path:
  return root / "parts" / f"p{process:05d}-of-{count:05d}"


def _write_npz(path: pathlib.Path, **arrays) -> None:
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)  # a part is either whole or absent


def build(path, *, which: str = "latest", split: str | None = None, dataset: str | None = None,
          out_dir=None, batch_size: int | None = None, part_batches: int = 32, data_dir: str | None = None,
          overwrite: bool = False, progress: bool = True) -> pathlib.Path:
  """Embeds every image of `split` (default: the one the run trained on, config.data.train_split, else 'train') of
  the training dataset (or `dataset`) with a checkpoint; returns the dir.

  Every process embeds its shard; a rerun resumes from the first part it lacks; an existing gallery of another
  checkpoint is refused unless overwrite=True (which deletes it). `path`: a workdir, a step directory or an open
  session.Session.
  """
  run = session.open(path, which, data_dir=data_dir)
  config = run.config
  name = dataset or config.data.train
  split = split or config.data.train_split
  root = gallery_dir(run.path, out_dir)
  info = registry.dataset_info(config, name)
  fingerprint = run.fingerprint
  ident = identity(config, run.step, fingerprint, name, split)
  if overwrite and jax.process_index() == 0 and root.exists():
    shutil.rmtree(root)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gallery: cleared")
  meta_path = root / META
  if meta_path.exists():
    meta = json.loads(meta_path.read_text())
    check_identity(meta_path, meta, ident)
    print(f"gallery {root}: up to date ({meta['rows']} rows of step {meta['step']})", flush=True)
    return root

  mesh = run.mesh()
  batch_size = run.batch_size(batch_size)
  batches, _ = inputs.eval_batches(config, info, split, batch_size, "center", image_ids=True)
  model = run.model(mesh)
  params = jax.device_put(run.params, sharding_lib.state_shardings(run.params, mesh))
  forward = inference.make_forward(model, info.palette, embed=True)

  pdir = _part_dir(root, jax.process_index(), jax.process_count())
  pdir.mkdir(parents=True, exist_ok=True)
  ident_path = pdir / "identity.json"
  if ident_path.exists():
    check_identity(ident_path, json.loads(ident_path.read_text()), ident)
  else:
    ident_path.write_text(json.dumps(ident, indent=1))
  num_parts = -(-len(batches) // part_batches)
  done = [k for k in range(num_parts) if (pdir / f"part-{k:06d}.npz").exists()]
  first = next((k for k in range(num_parts) if k not in done), num_parts)
  # Every process runs the same number of batches (collectives); the slowest one decides where all resume.
  if jax.process_count() > 1:
    first = int(multihost_utils.process_allgather(np.int32(first)).min())
  rows: dict[str, list] = {k: [] for k in ("embedding", "latlon", "fine_cell", "index", "image_id", "mask")}
  bar = tqdm.tqdm(total=len(batches), initial=first * part_batches, desc=f"gallery {name}/{split}",
                  disable=not progress or jax.process_index() != 0)
  part = first
  for b, batch in enumerate(batches.iter_from(first * part_batches) if hasattr(batches, "iter_from")
                            else list(batches)[first * part_batches:]):
    dev = sharding_lib.put_batch({"image": batch["image"], "seg": batch["seg"]}, mesh)
    _, emb = forward(params, dev["image"], dev["seg"])
    emb = multihost_utils.global_array_to_host_local_array(emb, mesh, jax.sharding.PartitionSpec("data"))
    rows["embedding"].append(np.asarray(emb, np.float16))
    rows["latlon"].append(np.asarray(batch["latlon"], np.float32))
    rows["fine_cell"].append(np.asarray(batch["cells"], np.int32)[:, -1])
    rows["index"].append(np.asarray(batch["index"], np.int64))
    ids = batch.get("image_id")
    rows["image_id"].append(np.asarray(ids, str) if ids is not None else np.asarray(batch["index"]).astype(str))
    rows["mask"].append(np.asarray(batch["mask"], bool))
    bar.update(1)
    if (b + 1) % part_batches == 0 or first * part_batches + b + 1 == len(batches):
      keep = np.concatenate(rows.pop("mask"))
      arrays = {k: np.concatenate(v)[keep] for k, v in rows.items()}
      _write_npz(pdir / f"part-{part:06d}.npz", **arrays)
      rows = {k: [] for k in ("embedding", "latlon", "fine_cell", "index", "image_id", "mask")}
      part += 1
  bar.close()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gallery: parts written")
  if jax.process_index() == 0:
    files = sorted(str(p.relative_to(root)) for p in (root / "parts").glob("p*/part-*.npz"))
    n = sum(len(np.load(root / f, allow_pickle=False)["index"]) for f in files)
    dim = int(np.load(root / files[0], allow_pickle=False)["embedding"].shape[1]) if files else 0
    meta = dict(ident, rows=n, dim=dim, processes=jax.process_count(), parts=files,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"gallery {root}: {n} rows of {dim}-d embeddings (checkpoint step {run.step})", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gallery: done")
  return root


def load(root, expect: Mapping[str, Any] | None = None) -> Gallery:
  """Reads a built gallery; `expect` (identity fields) must match or GalleryMismatchError says which differs."""
  root = pathlib.Path(root)
  meta_path = root / META
  if not meta_path.exists():
    raise FileNotFoundError(f"{root}: no gallery here (no {META}); build it with translocator-gallery --workdir W")
  meta = json.loads(meta_path.read_text())
  if expect:
    check_identity(meta_path, meta, expect)
  cols: dict[str, list] = {k: [] for k in ("embedding", "latlon", "fine_cell", "index", "image_id")}
  for f in meta["parts"]:
    with np.load(root / f, allow_pickle=False) as part:
      for k in cols:
        cols[k].append(part[k])
  arrays = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in cols.items()}
  if len(arrays["index"]) != meta["rows"]:
    raise errors.DataError(f"{root}: {len(arrays['index'])} rows in the parts, {META} says {meta['rows']}; rebuild "
                           "the gallery (translocator-gallery --overwrite)")
  order = np.argsort(arrays["index"], kind="stable")
  return Gallery(arrays["embedding"][order], arrays["latlon"][order].astype(np.float32),
                 arrays["fine_cell"][order].astype(np.int32), arrays["index"][order].astype(np.int64),
                 arrays["image_id"][order], meta)


def save_refine_settings(root, settings: Mapping[str, Any], config: ml_collections.ConfigDict) -> pathlib.Path:
  """Records the tuned refinement in meta.json and writes ROOT/config.json: the run's config with
  config.eval.refine='gallery' and config.eval.gallery holding the chosen values."""
  root = pathlib.Path(root)
  meta = json.loads((root / META).read_text())
  meta["refine"] = dict(settings)
  (root / META).write_text(json.dumps(meta, indent=1))
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.eval.refine = "gallery"
    config.eval.gallery = ml_collections.ConfigDict(dict(settings))
  path = root / "config.json"
  path.write_text(checkpoints.config_to_json(config))
  return path
