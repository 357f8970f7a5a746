"""How much 1-km accuracy a gallery allows when only the region is known: the ceiling behind refinement's 1-km row.

  .venv/bin/python benchmarks/one_km_ceiling.py --workdir W [--split validation]

For each photo of the split (default: the run's validation set, never test), the script is told the truth within R
km and answers with the densest 1-km cluster of training photos there: the gallery photo with the most gallery
photos within 1 km of it among those within R km of the truth, and the mean location of that cluster (the rule
refinement's vote approximates without being told the region). Prints one JSON object: the share of photos with any
training photo within 1 km (what an oracle picking the nearest training photo gets) and, for each R, the share this
told-the-region rule places within 1 km. A score near the second figure means refinement's 1-km misses are in
choosing the region, not in choosing the cluster inside it.
"""
import argparse
import json

import numpy as np

from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.geo import distance, nearest
from translocator_jax.infer import gallery as gallery_lib, session


def densest_cluster_hit(truth: np.ndarray, gallery_latlon: np.ndarray, region_km: float) -> bool:
  """Whether the densest 1-km cluster of gallery photos within region_km of truth has its mean within 1 km."""
  d = distance.haversine_km_numpy(truth[None], gallery_latlon)
  region = gallery_latlon[d < region_km]
  if not len(region):
    return False
  within = distance.haversine_km_numpy(region[:, None], region[None]) < 1.0
  centre = region[within[np.argmax(within.sum(1))]].mean(0)
  return bool(distance.haversine_km_numpy(centre, truth) < 1.0)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a run with a gallery (translocator-gallery --workdir W)")
  parser.add_argument("--gallery", default=None, help="gallery directory (default: WORKDIR/gallery)")
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: config.data.data_dir)")
  parser.add_argument("--split", default=None, help="split of the training dataset (default: the run's validation)")
  parser.add_argument("--regions-km", default="5,10,25", help="the radii R the rule is told the truth within")
  args = parser.parse_args(argv)
  config = session.open(args.workdir, data_dir=args.data_dir).config
  info = registry.dataset_info(config, config.data.train)
  if args.split:
    split = args.split
  else:
    found = registry.validation_set(config, info)
    if found is None:
      parser.error(f"{args.workdir}: the run has no validation set; name a split with --split")
    info, split = found
  records = sources.open_source(info.tfds_dir, split, decode=False)
  truth = np.stack([np.asarray(records[i][schema.LATLON], np.float64) for i in range(len(records))])
  gallery = np.asarray(gallery_lib.load(gallery_lib.gallery_dir(args.workdir, args.gallery)).latlon, np.float64)
  oracle, _ = nearest.nearest_km(truth, gallery)
  out = {"workdir": args.workdir, "dataset": info.name, "split": split, "n": len(truth), "gallery": len(gallery),
         "any_training_photo_within_1km": float(np.mean(oracle < 1.0))}
  for r in (float(x) for x in args.regions_km.split(",")):
    out[f"densest_cluster_told_region_{r:g}km"] = float(np.mean([densest_cluster_hit(t, gallery, r) for t in truth]))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
