"""The paper's ablation table on the embedded Earth-patches set: configs/earth_demo.py trained as

  a  RGB only                                     model.fusion='none'
  b  + segmentation, late concatenation           model.fusion='late_concat'
  c  + segmentation, CLS fusion after every layer model.fusion='cls_sum' (MFF), no scene head
  d  (c) + scene head                             the demo
  e  (d) + gallery refinement                     translocator-gallery on (d)'s runs, tuned on validation

three seeds each (the seed changes the initialisation and the data order: config.seed, data.shuffle_seed).

  .venv/bin/python benchmarks/ablations.py --workdir runs/ablations            # ~70 min on 2 CPU cores
  .venv/bin/python benchmarks/ablations.py --workdir /tmp/abl --seeds 0 --steps 24 --tiny   # smoke run

Runs resume (a finished run is only re-evaluated when its results file is missing). Prints one JSON object
(every run's table, then mean and std per variant) and a markdown table of mean +- std at 1/25/200/750/2500 km,
on the whole test split and on its unseen-place subset (no training patch within 25 km).
"""
import argparse
import json
import pathlib
import sys

import numpy as np

from translocator_jax.commands.demo import CONFIG
from translocator_jax.eval import benchmark as evaluation
from translocator_jax.geo.metrics import ACC_KEYS
from translocator_jax.infer import gallery, refine as gallery_main  # train_projection, tune_on_validation
from translocator_jax.runtime import config_io
from translocator_jax.train import loop

VARIANTS = {
    "a": ("RGB only", {"model.fusion": "none"}),
    "b": ("+ Seg, late concat", {"model.fusion": "late_concat"}),
    "c": ("+ Seg + MFF (no scene head)", {"model.fusion": "cls_sum", "no_scene": True}),
    "d": ("+ Seg + MFF + Scene (the demo)", {}),
    "e": ("+ Seg + MFF + Scene + gallery refinement", {}),
}
# The paper's full-model row (Im2GPS3k, ../shared/DESIGN.md) beside ours. Its ablation rows (ViT base, + Seg,
# + Seg + MFF) are not in ../shared and are not transcribed here.
PAPER = {"d": [11.8, 31.1, 46.7, 58.9, 80.1]}


def variant_config(variant: str, seed: int, steps: int | None, tiny: bool, data_dir: str | None):
  config = config_io.load_config(f"{CONFIG}:tiny" if tiny else str(CONFIG))
  _, overrides = VARIANTS[variant]
  with config.unlocked():
    config.seed = seed
    config.data.shuffle_seed = seed
    if "model.fusion" in overrides:
      config.model.fusion = overrides["model.fusion"]
    if overrides.get("no_scene"):
      del config.model.heads["scene"]
      del config.loss.weights["scene"]
    if steps:
      config.train.total_steps = steps
      config.train.ckpt_every = steps
      config.train.eval_every = steps
    config.train.progress_bar = False
    if data_dir:
      config.data.data_dir = data_dir
  return config


def run_one(variant: str, seed: int, root: pathlib.Path, steps, tiny, data_dir) -> dict:
  base = "d" if variant == "e" else variant
  workdir = root / f"{base}_seed{seed}"
  results = workdir / ("ablation_refined.json" if variant == "e" else "ablation.json")
  if results.exists():
    return json.loads(results.read_text())
  config = variant_config(base, seed, steps, tiny, data_dir)
  loop.train(config, workdir)
  if variant == "e":
    g = gallery.build(workdir, data_dir=data_dir, progress=False)
    gallery_main.train_projection(g, **({"steps": 200} if tiny else {}))
    gallery_main.tune_on_validation(workdir, g, data_dir=data_dir)
  ev = evaluation.evaluate_checkpoint(workdir, datasets=["earth_patches"], data_dir=data_dir, knn=False,
                                      refine_mode="gallery" if variant == "e" else "none",
                                      output_dir=workdir / ("predictions_refined" if variant == "e" else "predictions"))
  r = ev.results[0]
  prefix, unseen_prefix = ("refined_", "unseen_refined_") if variant == "e" else ("", "unseen_")
  out = {"variant": variant, "seed": seed, "workdir": str(workdir),
         "test": {k: r[f"{prefix}{k}"] for k in ACC_KEYS},
         "unseen": {k: r[f"{unseen_prefix}{k}"] for k in ACC_KEYS}, "unseen_n": r["unseen_n"]}
  results.write_text(json.dumps(out, indent=1))
  return out


def summarise(runs: list[dict]) -> dict:
  out = {}
  for v in VARIANTS:
    mine = [r for r in runs if r["variant"] == v]
    if not mine:
      continue
    out[v] = {"name": VARIANTS[v][0], "seeds": [r["seed"] for r in mine]}
    for subset in ("test", "unseen"):
      a = 100 * np.array([[r[subset][k] for k in ACC_KEYS] for r in mine], np.float64)
      out[v][subset] = {"mean": a.mean(0).round(2).tolist(), "std": a.std(0, ddof=1 if len(a) > 1 else 0).round(2).tolist()}
  return out


def markdown(summary: dict) -> str:
  head = "| variant | " + " | ".join(f"{t} km" for t in (1, 25, 200, 750, 2500)) + " | unseen: " + \
         " | ".join(f"{t} km" for t in (1, 25, 200, 750, 2500)) + " | paper (Im2GPS3k, 750 km) |"
  lines = [head, "|" + "---|" * 12]
  for v, s in summary.items():
    cells = [f"{m:.1f} ± {d:.1f}" for m, d in zip(s["test"]["mean"], s["test"]["std"])]
    cells += [f"{m:.1f} ± {d:.1f}" for m, d in zip(s["unseen"]["mean"], s["unseen"]["std"])]
    paper = PAPER[v][3] if v in PAPER else "not available"
    lines.append(f"| ({v}) {s['name']} | " + " | ".join(cells) + f" | {paper} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/ablations")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--variants", default="a,b,c,d,e")
  p.add_argument("--steps", type=int, default=None, help="override train.total_steps (smoke runs)")
  p.add_argument("--tiny", action="store_true", help="configs/earth_demo.py:tiny (smoke runs)")
  p.add_argument("--data-dir", default=None)
  args = p.parse_args(argv)
  root = pathlib.Path(args.workdir)
  runs = []
  for v in args.variants.split(","):
    for seed in (int(s) for s in args.seeds.split(",")):
      r = run_one(v, seed, root, args.steps, args.tiny, args.data_dir)
      runs.append(r)
      print(f"ablation {v} seed {seed}: " + json.dumps(r["test"]), file=sys.stderr, flush=True)
  summary = summarise(runs)
  print(json.dumps({"runs": runs, "summary": summary}))
  print(markdown(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
