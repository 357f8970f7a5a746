"""The paper's setup: TransLocator B/16 at 224 px on MP-16, three S2 partitions, S3 scene head.

Run (TPU pod or one host; see docs/paper.md):
  translocator-train --config configs/translocator_b16_mp16.py --workdir gs://BUCKET/tl_b16
  translocator-train --config configs/translocator_b16_mp16.py:runlocal --workdir /tmp/tl_b16_local
  translocator-train --config configs/translocator_b16_mp16.py:authors --workdir gs://BUCKET/tl_b16_authors

`authors` follows the authors' public training code (ShramanPramanick/Transformer_Based_Geo-localization,
experiment_codes/ViT_RGB_train.py) where this project can: loss 0.5 coarse + 0.3 middle + 0.2 fine + 1.0 scene;
SGD, momentum 0.9, weight decay 1e-4 on every parameter; base rate 0.1, linear warm-up over 2 epochs of MP-16, then
cosine to 0.001 of it, the weights' group at 0.2x and the 1-D parameters' (biases, norm scales) at 0.0048x;
bfloat16 matmuls (their fp16 autocast); no gradient clipping; their augmentation (rotation by 0-15 degrees,
mirror, 256x256 resize, ten crops of 224 whose logits are averaged per image; the map resized and cut alike,
without the random transforms) and ten-crop evaluation. Their epoch count is a command-line argument, not in
the code (20 epochs here are ours).

Every experiment config has the same sections (the fields consumers read):
  model     the network (translocator_jax.models reads it)
  mesh      device mesh axis sizes (data, fsdp)
  data      dataset names and reading options (translocator_jax.data reads it)
  loss      head weights and smoothing
  optim     optimizer and schedule
  train     steps, checkpointing, logging
  eval      evaluation datasets and test-time augmentation
  init      pretrained weights
"""
import ml_collections

SHARED_DATA = "../shared/data"
MP16_IMAGES = 4_723_695  # rows of mp16_places365.csv (a build that skips bad files has a few fewer)
CONFIG_ARGS = ("runlocal", "authors")  # the variants get_config knows (config_io refuses others)


def get_config(arg: str | None = None):
  runlocal = arg == "runlocal"
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.variant = "Ti/16" if runlocal else "B/16"
  c.model.image_size = 224
  c.model.fusion = "cls_sum"          # 'cls_sum' | 'late_concat' | 'none'
  c.model.fusion_per_layer = False    # one shared f/g (paper default) or one per layer
  c.model.seg_input = "palette"       # 'palette' (colourised map, paper) | 'classes' (learned embedding)
  c.model.num_seg_classes = 150       # ADE20K-150
  c.model.heads = ml_collections.ConfigDict({"coarse": 3298, "middle": 7202, "fine": 12893, "scene": 3})
  c.model.dtype = "float32"           # matmul dtype; params and LayerNorm stay float32
  # Selective rematerialisation: the backward pass keeps the matmuls' outputs and recomputes the attention
  # softmax, LayerNorms and GELU (a few % more FLOPs): the B/16 bfloat16 step at 64 images a v5e chip needs
  # 7.8 GiB instead of 11.3 (benchmarks/tpu_compile.py). Off in runlocal (CPU memory is not the limit).
  c.model.remat = not runlocal
  c.model.remat_policy = "dots_with_no_batch_dims_saveable"
  # One nn.scan over the layers of both streams: the B/16 bfloat16 step for a v5e-16 compiles in 52 s instead of
  # 141 (this 2-core host, libtpu 0.0.42.1), paid at every start and restart of a pod run, for 9.5 GiB a chip
  # instead of 7.8 (docs/tpu.md). False (and in runlocal, a small model on a CPU): one traced block a layer.
  c.model.scan_layers = not runlocal
  c.model.attention = "auto"          # "auto": cuDNN fused attention on a GPU in 16-bit, else "xla"
  c.model.dropout = 0.0
  c.model.seg_embed_dim = 16          # seg_input='classes': channels of the learned class-embedding table
  c.model.ln_epsilon = 1e-6           # 1e-6 for original ViT .npz weights; 1e-12 for HF ViT weights
  c.model.gelu_approximate = True     # tanh GELU as original ViT; False = exact erf (HF ViT's "gelu")
  c.model.head_zeroinit = True        # heads start at zero (big_vision default)
  # Size overrides for custom (tiny) models; None = the variant's own sizes.
  c.model.width = None
  c.model.depth = None
  c.model.mlp_dim = None
  c.model.num_heads = None

  c.data = ml_collections.ConfigDict()
  c.data.train = "mp16"
  c.data.data_dir = None              # TFDS data dir; None = TFDS default
  c.data.partitions_dir = f"{SHARED_DATA}/partitions"
  c.data.partition_files = ("cells_50_5000.csv", "cells_50_2000.csv", "cells_50_1000.csv")  # coarse, middle, fine
  c.data.batch_size = 8 if runlocal else 1024   # global batch
  c.data.worker_count = 0 if runlocal else 16
  c.data.shuffle_seed = 0
  c.data.val_split = None             # MP-16 has no validation split...
  # ...so the run validates on YFCC26k, as the paper does (any registered 'dataset[:split]'). Without a built
  # yfcc26k: --set data.val=None (or build it: python -m data_prep.build_benchmark --name yfcc26k ...).
  c.data.val = None if runlocal else "yfcc26k"

  c.loss = ml_collections.ConfigDict()
  c.loss.weights = ml_collections.ConfigDict({"coarse": 1.0, "middle": 1.0, "fine": 1.0, "scene": 1.0})
  c.loss.label_smoothing = 0.0
  c.loss.haversine_tau_km = 0.0       # > 0: PIGEON-style haversine label smoothing on the geo-cell heads

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"                # 'sgd' (momentum) | 'adamw'
  c.optim.learning_rate = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 10 if runlocal else 2000
  c.optim.clip_norm = 1.0
  c.optim.grad_accum_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 20 if runlocal else 100_000
  c.train.log_every = 1 if runlocal else 100
  c.train.ckpt_every = 10 if runlocal else 2000
  c.train.keep_checkpoints = 3
  c.train.fsdp = False                # True: every device on the mesh's fsdp axis (short for mesh.data=1, fsdp=-1)
  c.train.fsdp_min_size = 2 ** 14     # arrays smaller than this stay replicated under FSDP
  c.train.async_checkpoints = True
  c.train.eval_every = 0 if runlocal else 4000  # > 0: validate (data.val / val_split), keep the best checkpoint
  c.train.best_metric = "val_acc_750km"
  c.train.best_mode = "max"
  c.train.tensorboard = True
  c.train.progress_bar = True

  # Device mesh (runtime/sharding.py): a batch is split over both axes, parameters and optimizer state over
  # 'fsdp'; -1 takes the remaining devices. Several slices put 'data' across them (DCN).
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

  c.eval = ml_collections.ConfigDict()
  c.eval.datasets = ("im2gps", "im2gps3k", "yfcc4k")
  c.eval.batch_size = 8 if runlocal else 512
  c.eval.tta = "center"               # 'center' | 'five_crop'
  c.eval.crop_fraction = 0.875        # crop side / shorter side, in evaluation and Predictor alike

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = None            # path to ViT-B_16.npz or a HF ViT directory
  if arg == "authors":
    authors_recipe(c)
  return c


def authors_recipe(c, epochs: int = 20, warmup_epochs: int = 2):
  """The authors' loss weights, optimizer and schedule (see the module docstring) on config `c`."""
  steps_per_epoch = MP16_IMAGES // c.data.batch_size
  c.model.dtype = "bfloat16"
  c.loss.weights = ml_collections.ConfigDict({"coarse": 0.5, "middle": 0.3, "fine": 0.2, "scene": 1.0})
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.decay_regex = "."           # torch SGD's weight_decay reaches every parameter
  c.optim.lr_multipliers = ml_collections.ConfigDict({"weights": 0.2, "biases": 0.0048})
  c.optim.warmup_steps = warmup_epochs * steps_per_epoch
  c.optim.end_lr_factor = 0.001
  c.optim.clip_norm = None
  c.train.total_steps = epochs * steps_per_epoch
  c.data.augmentation = "authors_ten_crop"   # ten crops a photo: about ten times the compute of a step
  c.eval.tta = "ten_crop"
