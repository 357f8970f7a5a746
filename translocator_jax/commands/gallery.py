"""`translocator-gallery --workdir W [--split train]`: embed the training images, then tune refinement.

  translocator-gallery --workdir runs/earth_demo          # W/gallery: embeddings, coordinates, cells, ids
  translocator-eval --workdir runs/earth_demo --refine gallery

1. Every training image is embedded with the checkpoint (infer.gallery.build: sharded over every device of every
   host, per-process parts on disk, resumable, refusing parts of another checkpoint).
2. A light geo-aware projection of the embeddings is trained on the gallery (infer.projection), W/gallery/
   projection.npz.
3. Refinement's settings (infer.refine.GRID, plain or projected features among them) are chosen on the run's
   validation set (config.data.val, else the training dataset's config.data.val_split), never on test, and
   saved in W/gallery/meta.json and W/gallery/config.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import jax

from translocator_jax.geo import metrics
from translocator_jax.infer import gallery as gallery_lib, projection, refine, session
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


def _main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  run = session.open(args.workdir or args.checkpoint, args.which, data_dir=args.data_dir)  # once for both steps
  root = gallery_lib.build(run, split=args.split, out_dir=args.out, batch_size=args.batch_size,
                           part_batches=args.part_batches, overwrite=args.overwrite)
  if not args.no_projection:
    refine.train_projection(root, steps=args.projection_steps)
  if args.no_tune:
    return 0
  settings, summary = refine.tune_on_validation(run, root, batch_size=args.batch_size)
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
