"""A split run through a checkpoint with every head's probabilities and the embedding kept per image: what
choosing refinement's settings (refine.tune_on_validation) and fitting the confidence radii (calibration) read."""
from __future__ import annotations

from translocator_jax import errors
from translocator_jax.data import registry
from translocator_jax.data.pipeline import inputs
from translocator_jax.geo import hierarchy
from translocator_jax.infer import inference, session


def split_queries(path, split: str | None = None, *, which: str = "latest", data_dir: str | None = None,
                  batch_size: int | None = None):
  """(Predictions with extras p_coarse/p_middle/p_fine/embedding, config, partitions, what was read, the opened
  session.Session) of a split of the training dataset, or (split None) of the run's validation set
  (config.data.val, else data.val_split). `path`: a workdir, a step directory or an open Session."""
  run = session.open(path, which, data_dir=data_dir)
  config = run.config
  train_info = registry.dataset_info(config, config.data.train, need_records=split is not None)
  partitions = registry.load_partitions(train_info)
  info = train_info
  if split is None:
    found = registry.validation_set(config, train_info)
    if found is None:
      raise errors.UserError(f"{run.path}: the run has no validation set (config.data.val or config.data.val_split), "
                             "so refinement cannot be tuned (translocator-gallery --no-tune skips tuning)")
    info, split = found
  mesh = run.mesh()
  batch_size = run.batch_size(batch_size)
  # The crops evaluation takes (config.eval.tta), so settings and radii are fitted on the queries they serve.
  batches, _ = inputs.eval_batches(config, info, split, batch_size, config.eval.tta)
  hook = lambda probs, emb: {**{f"p_{h}": probs[h] for h in hierarchy.LEVELS}, "embedding": emb}
  preds = inference.predict_dataset(run.model(mesh), run.params, batches, mesh=mesh,
                                    partitions=partitions, heads=config.model.heads, desc=f"queries {split}",
                                    total=len(batches), palette=info.palette, embedding_hook=hook)
  where = split if info.name == train_info.name else f"{info.name}/{split}"
  return preds, config, partitions, where, run


