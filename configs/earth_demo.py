"""The demo: a small TransLocator trained from scratch on the Earth-patches set (built on first use, no download).

  translocator-train --config configs/earth_demo.py --workdir /tmp/earth_demo      # ~10 min on 2 CPU cores
  translocator-eval --workdir /tmp/earth_demo --datasets earth_patches           # table vs chance and kNN
  translocator-train --config configs/earth_demo.py:tiny --workdir /tmp/earth_tiny  # seconds (tests)

The set (data/earth_patches.py, preset 'default'): 16k train / 2k validation / 2k test patches of 48 px, each a
square of Blue-Marble ground with its per-pixel land-cover map, at a location drawn like an MP-16 photo; three
S2 partitions built from the training locations. Head sizes of 0 are taken from the built partitions (the saved
config.json holds the resolved numbers).
"""
import ml_collections

CONFIG_ARGS = ("tiny",)  # the variants get_config knows (config_io refuses others)


def get_config(arg: str | None = None):
  tiny = arg == "tiny"
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.variant = "Ti/8"
  c.model.width = 64 if tiny else 96
  c.model.depth = 1 if tiny else 3
  c.model.mlp_dim = 128 if tiny else 288
  c.model.num_heads = 2 if tiny else 4
  c.model.patch_size = 8
  c.model.image_size = 32 if tiny else 48
  c.model.fusion = "cls_sum"
  c.model.fusion_per_layer = False
  c.model.seg_input = "classes"        # the set's 9 land-cover classes, learned embedding
  c.model.num_seg_classes = 9
  c.model.heads = ml_collections.ConfigDict({"coarse": 0, "middle": 0, "fine": 0, "scene": 3})  # 0: from data
  c.model.dtype = "float32"
  c.model.remat = False
  c.model.attention = "auto"  # "auto": cuDNN fused attention on a GPU in 16-bit, else "xla"
  c.model.dropout = 0.0
  c.model.head_zeroinit = True

  c.data = ml_collections.ConfigDict()
  c.data.train = "earth_patches"
  c.data.earth_patches = ml_collections.ConfigDict({"config": "tiny" if tiny else "default"})
  c.data.data_dir = None               # TFDS data dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.val_split = "validation"
  c.data.batch_size = 16 if tiny else 128
  c.data.worker_count = 0
  c.data.shuffle_seed = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.weights = ml_collections.ConfigDict({"coarse": 1.0, "middle": 1.0, "fine": 1.0, "scene": 0.25})
  c.loss.label_smoothing = 0.0
  c.loss.haversine_tau_km = 0.0 if tiny else 75.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 5 if tiny else 50
  c.optim.clip_norm = 1.0
  c.optim.grad_accum_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 24 if tiny else 700
  c.train.log_every = 4 if tiny else 50
  c.train.ckpt_every = 8 if tiny else 350
  c.train.eval_every = 12 if tiny else 350
  c.train.keep_checkpoints = 3
  c.train.best_metric = "val_acc_750km"
  c.train.best_mode = "max"
  c.train.fsdp = False
  c.train.async_checkpoints = True
  c.train.tensorboard = True
  c.train.progress_bar = not tiny

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})  # runtime/sharding.py

  c.eval = ml_collections.ConfigDict()
  c.eval.datasets = ("earth_patches",)
  c.eval.batch_size = 64 if tiny else 256
  c.eval.tta = "center"
  c.eval.crop_fraction = 0.875        # crop side / shorter side, in evaluation and Predictor alike

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = None
  return c
