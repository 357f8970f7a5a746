"""`translocator-gallery --workdir W [--split train]`: embed the training images, then tune refinement.

  translocator-gallery --workdir runs/earth_demo          # W/gallery: embeddings, coordinates, cells, ids
  translocator-eval --workdir runs/earth_demo --refine gallery

1. Every training image is embedded with the checkpoint (eval.gallery.build: sharded over every device of every
   host, per-process parts on disk, resumable, refusing parts of another checkpoint).
2. A light geo-aware projection of the embeddings is trained on the gallery (eval.projection), W/gallery/
   projection.npz.
3. Refinement's settings (eval.refine.GRID, plain or projected features among them) are chosen on the run's
   validation set (config.data.val, else the training dataset's config.data.val_split), never on test, and
   saved in W/gallery/meta.json and W/gallery/config.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import jax
from jax.experimental import multihost_utils

from translocator_jax.eval import gallery as gallery_lib, projection, queries, refine
from translocator_jax.geo import metrics
from translocator_jax.runtime import cli

PROG = "translocator-gallery"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_checkpoint_args(p)
  p.add_argument("--split", default=None,
                 help="the split to embed (default: the one the run trained on, config.data.train_split or train)")
  p.add_argument("--out", default=None, help="gallery directory (default: WORKDIR/gallery)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: config.data.data_dir)")
  p.add_argument("--batch-size", type=int, default=None, help="global batch (default: config.eval.batch_size)")
  p.add_argument("--part-batches", type=int, default=32, help="batches per part file (the unit of resuming)")
  p.add_argument("--overwrite", action="store_true", help="delete an existing gallery (of any checkpoint) first")
  p.add_argument("--no-tune", action="store_true", help="skip choosing refinement's settings on validation")
  p.add_argument("--no-projection", action="store_true", help="skip training the geo-aware projection")
  p.add_argument("--projection-steps", type=int, default=projection.STEPS, help="its training steps")
  return p.parse_args(argv)


def tune_on_validation(path, root, *, which: str = "latest", data_dir: str | None = None,
                       batch_size: int | None = None) -> tuple[refine.RefineSettings, dict]:
  """Chooses refinement's settings on the run's validation set and saves them with the gallery."""
  preds, config, partitions, split, _ = queries.split_queries(path, which=which, data_dir=data_dir,
                                                              batch_size=batch_size)
  gallery = gallery_lib.load(root)
  proj_path = projection.path_in(root)
  refiner = refine.Refiner(gallery, partitions,
                           projection=projection.Projection.load(proj_path) if proj_path.exists() else None)
  probs = {h: preds.extras[f"p_{h}"] for h in ("coarse", "middle", "fine")}
  settings, records = refine.tune(refiner, probs, preds.extras["embedding"], preds.true_latlon)
  gallery_lib.save_refine_settings(root, {**settings.__dict__, "tuned_on": split}, config)
  fstar = metrics.accuracy_table(preds.pred_latlon, preds.true_latlon)
  chosen = next(r for r in records if all(r[k] == v for k, v in settings.__dict__.items()))
  return settings, {"split": split, "n": len(preds.true_latlon), "fstar": fstar, "refined": chosen,
                    "tried": len(records)}


def train_projection(root, **kwargs) -> pathlib.Path:
  """Trains the geo-aware projection on a built gallery (once: an existing projection.npz is kept)."""
  path = projection.path_in(root)
  if jax.process_index() == 0 and not path.exists():
    gallery = gallery_lib.load(root)
    try:
      projection.train(gallery.embeddings, gallery.latlon, **kwargs).save(path)
      print(f"geo projection: {path}", flush=True)
    except projection.TooFewPairsError as e:
      print(f"no geo projection: {e}; refinement uses the plain features", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gallery: projection")
  return path


def _main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  path = args.workdir or args.checkpoint
  root = gallery_lib.build(path, which=args.which, split=args.split, out_dir=args.out, batch_size=args.batch_size,
                           part_batches=args.part_batches, data_dir=args.data_dir, overwrite=args.overwrite)
  if not args.no_projection:
    train_projection(root, steps=args.projection_steps)
  if args.no_tune:
    return 0
  settings, summary = tune_on_validation(path, root, which=args.which, data_dir=args.data_dir,
                                         batch_size=args.batch_size)
  if jax.process_index() == 0:
    print(f"refinement tuned on {summary['split']} ({summary['n']} images, {summary['tried']} settings tried): "
          f"{json.dumps(settings.__dict__)}")
    print(metrics.format_table([(f"{summary['split']} / f*", summary["fstar"]),
                                (f"{summary['split']} / refined", summary["refined"])]))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_main, sys.argv[1:] if argv is None else argv, prog=PROG)


if __name__ == "__main__":
  sys.exit(main())
