"""A tiny TransLocator on random in-memory examples: the trainer's test config (runs in seconds on one CPU).

get_config('overfit') trains long enough to memorise the examples.
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      variant="Ti/8", width=32, depth=1, mlp_dim=64, num_heads=2, image_size=16, fusion="cls_sum",
      fusion_per_layer=False, seg_input="palette", num_seg_classes=8, dtype="float32", dropout=0.0,
      heads={"coarse": 4, "middle": 6, "fine": 8, "scene": 3}, head_zeroinit=False))
  c.data = ml_collections.ConfigDict(dict(train="synthetic", batch_size=8, data_dir=None, val_split=None,
                                          synthetic=dict(num_examples=24, seed=0)))
  c.loss = ml_collections.ConfigDict(dict(weights={"coarse": 1.0, "middle": 1.0, "fine": 1.0, "scene": 0.5},
                                          label_smoothing=0.0, haversine_tau_km=0.0))
  c.optim = ml_collections.ConfigDict(dict(name="adamw", learning_rate=3e-3, weight_decay=1e-4, warmup_steps=2,
                                           clip_norm=1.0, grad_accum_steps=1, momentum=0.9))
  c.train = ml_collections.ConfigDict(dict(total_steps=12, log_every=1, ckpt_every=4, keep_checkpoints=3,
                                           fsdp=False, eval_every=0, progress_bar=False, async_checkpoints=True,
                                           tensorboard=True))
  c.eval = ml_collections.ConfigDict(dict(datasets=("synthetic",), batch_size=8, tta="center"))
  c.init = ml_collections.ConfigDict(dict(pretrained=None))
  if arg == "overfit":
    c.optim.learning_rate = 1e-2
    c.optim.weight_decay = 0.0
    c.train.total_steps = 150
    c.train.ckpt_every = 0
    c.train.log_every = 50
  return c
