"""TransLocator: shapes for every variant and fusion mode, fusion really mixes, checkpoint names, determinism."""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from translocator_jax import models
from translocator_jax.models import layers as vit_layers
from translocator_jax.models import vit
from translocator_jax.runtime import config_schema

HEADS = {"coarse": 3298, "middle": 7202, "fine": 12893, "scene": 3}
# Encoder (no head) parameter counts of the published ViTs at 224 px: timm / paper tables.
ENCODER_PARAMS_224 = {"Ti/16": 5_524_416, "S/16": 21_665_664, "B/16": 85_798_656, "L/16": 303_301_632,
                      "B/32": 87_455_232}


def _batch(cfg, b=2, seed=0):
  s = cfg.image_size
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32)
  if cfg.get("seg_input", "palette") == "classes":
    seg = jnp.asarray(rng.integers(0, cfg.num_seg_classes, size=(b, s, s)), jnp.int32)
  else:
    seg = jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32)
  return image, seg


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("variant", sorted(ENCODER_PARAMS_224))
def test_variant_shapes_abstract(variant):
  cfg = config_schema.complete_section("model", dict(variant=variant, image_size=224, heads=HEADS))
  model = models.build_model(cfg)
  image = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image, image)
  params = variables["params"]
  assert _count(params["rgb"]) == ENCODER_PARAMS_224[variant]
  assert _count(params["seg"]) == ENCODER_PARAMS_224[variant]
  width = vit.decode_variant(variant).width
  assert params["head_fine"]["kernel"].shape == (width, 12893)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits = jax.eval_shape(model.apply, variables, image, image)
  assert {k: (v.shape, v.dtype) for k, v in logits.items()} == {
      k: ((2, n), jnp.float32) for k, n in HEADS.items()}


@pytest.mark.parametrize("arg,rep_factor,has_seg", [
    ("fusion=cls_sum", 1, True),
    ("fusion=cls_sum,fusion_per_layer=True", 1, True),
    ("fusion=late_concat", 2, True),
    ("fusion=none", 1, False),
    ("fusion=cls_sum,seg_input=classes,dtype=bfloat16", 1, True),
])
def test_fusion_modes_run(tiny, arg, rep_factor, has_seg):
  cfg = tiny(arg + ",head_zeroinit=False").model
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  variables = model.init(jax.random.key(0), image, seg)
  params = variables["params"]
  assert ("seg" in params) == has_seg
  assert ("seg_classes" in params) == (cfg.seg_input == "classes" and has_seg)
  fusion_keys = sorted(k for k in params if k.startswith("fusion"))
  if cfg.fusion == "cls_sum":
    assert fusion_keys == (["fusion_0", "fusion_1"] if cfg.fusion_per_layer else ["fusion"])
  else:
    assert fusion_keys == []
  # Parameters stay float32 whatever the matmul dtype.
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits, state = model.apply(variables, image, seg, mutable=["intermediates"])
  assert {k: (v.shape, v.dtype) for k, v in logits.items()} == {
      k: ((2, n), jnp.float32) for k, n in cfg.heads.items()}
  assert all(np.isfinite(np.asarray(v)).all() for v in logits.values())
  assert state["intermediates"]["pre_logits"][0].shape == (2, rep_factor * cfg.width)
  assert params["head_coarse"]["kernel"].shape == (rep_factor * cfg.width, 5)


def test_bfloat16_matmuls_close_to_float32(tiny):
  cfg32 = tiny("head_zeroinit=False").model
  cfg16 = tiny("head_zeroinit=False,dtype=bfloat16").model
  image, seg = _batch(cfg32)
  variables = models.build_model(cfg32).init(jax.random.key(1), image, seg)
  a = models.build_model(cfg32).apply(variables, image, seg)["fine"]
  b = models.build_model(cfg16).apply(variables, image, seg)["fine"]
  assert not np.array_equal(np.asarray(a), np.asarray(b))  # really ran in bfloat16
  np.testing.assert_allclose(b, a, atol=0.1 * float(jnp.abs(a).max()))


def _rgb_cls_after_each_layer(model, variables, image, seg):
  _, state = model.apply(variables, image, seg, mutable=["intermediates"])
  inter = state["intermediates"]
  return [np.asarray(inter[f"rgb_cls_{i}"][0]) for i in range(2)], np.asarray(inter["pre_logits"][0])


@pytest.mark.parametrize("fusion", ["cls_sum", "none", "late_concat"])
def test_fusion_mixes_streams(tiny, fusion):
  cfg = tiny(f"fusion={fusion}").model
  model = models.build_model(cfg)
  image, seg = _batch(cfg, seed=0)
  _, seg2 = _batch(cfg, seed=1)
  variables = model.init(jax.random.key(0), image, seg)
  cls_a, rep_a = _rgb_cls_after_each_layer(model, variables, image, seg)
  cls_b, rep_b = _rgb_cls_after_each_layer(model, variables, image, seg2)
  if fusion == "cls_sum":
    # The segmentation map reaches the RGB stream's CLS right after layer 1.
    assert np.abs(cls_a[0] - cls_b[0]).max() > 1e-3
    assert np.abs(rep_a - rep_b).max() > 1e-3
  else:
    for a, b in zip(cls_a, cls_b):
      np.testing.assert_array_equal(a, b)
    if fusion == "none":
      np.testing.assert_array_equal(rep_a, rep_b)
    else:  # late_concat: only the final concatenation sees the seg stream
      assert np.abs(rep_a - rep_b).max() > 1e-3
      np.testing.assert_array_equal(rep_a[:, :cfg.width], rep_b[:, :cfg.width])


def _checkpoint_names(depth):
  block = ["LayerNorm_0/scale", "LayerNorm_0/bias", "LayerNorm_2/scale", "LayerNorm_2/bias",
           "MlpBlock_3/Dense_0/kernel", "MlpBlock_3/Dense_0/bias", "MlpBlock_3/Dense_1/kernel",
           "MlpBlock_3/Dense_1/bias"]
  block += [f"MultiHeadDotProductAttention_1/{m}/{p}" for m in ("query", "key", "value", "out")
            for p in ("kernel", "bias")]
  names = {"embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
           "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"}
  names |= {f"Transformer/encoderblock_{i}/{b}" for i in range(depth) for b in block}
  return names


@pytest.mark.parametrize("remat", [False, True])
def test_param_names_match_vit_checkpoints(tiny, remat):
  cfg = tiny(f"remat={remat}").model
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  params = jax.eval_shape(model.init, jax.random.key(0), image, seg)["params"]
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  for stream in ("rgb", "seg"):
    names = {k[len(stream) + 1:] for k in flat if k.startswith(stream + "/")}
    assert names == _checkpoint_names(cfg.depth)
  d, h = cfg.width, cfg.num_heads
  att = "rgb/Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
  assert flat[f"{att}/query/kernel"].shape == (d, h, d // h)
  assert flat[f"{att}/query/bias"].shape == (h, d // h)
  assert flat[f"{att}/out/kernel"].shape == (h, d // h, d)
  assert flat["rgb/embedding/kernel"].shape == (8, 8, 3, d)
  assert flat["rgb/Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 16, d)
  others = {k.split("/")[0] for k in flat} - {"rgb", "seg"}
  assert others == {"fusion", "head_coarse", "head_middle", "head_fine", "head_scene"}
  assert {k for k in flat if k.startswith("fusion/")} == {
      f"fusion/{fg}/{m}" for fg in "fg" for m in ("LayerNorm_0/scale", "LayerNorm_0/bias", "Dense_0/kernel",
                                                     "Dense_0/bias")}


def test_remat_same_values_and_grads(tiny):
  # One stream (fusion=none) keeps this quick; remat wraps the same block class in both streams.
  cfg, cfg_r = tiny("head_zeroinit=False,fusion=none").model, tiny("head_zeroinit=False,fusion=none,remat=True").model
  image, seg = _batch(cfg)
  variables = models.build_model(cfg).init(jax.random.key(0), image, seg)

  def loss(params, model):
    out = model.apply({"params": params}, image, seg, train=True)
    return sum(jnp.sum(v ** 2) for v in out.values())

  grad = jax.jit(jax.grad(loss), static_argnums=1)  # one compile beats many eager ops
  g = grad(variables["params"], models.build_model(cfg))
  g_r = grad(variables["params"], models.build_model(cfg_r))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, g_r)
  assert float(jnp.abs(g["rgb"]["embedding"]["kernel"]).max()) > 0


def test_determinism_and_dropout(tiny):
  cfg = tiny("head_zeroinit=False,dropout=0.2").model
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  v1 = model.init(jax.random.key(3), image, seg)
  v2 = model.init(jax.random.key(3), image, seg)
  v3 = model.init(jax.random.key(4), image, seg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)
  assert not np.array_equal(v1["params"]["rgb"]["embedding"]["kernel"], v3["params"]["rgb"]["embedding"]["kernel"])
  e1, e2 = model.apply(v1, image, seg), model.apply(v1, image, seg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, e1, e2)
  t1 = model.apply(v1, image, seg, train=True, rngs={"dropout": jax.random.key(0)})
  t2 = model.apply(v1, image, seg, train=True, rngs={"dropout": jax.random.key(0)})
  t3 = model.apply(v1, image, seg, train=True, rngs={"dropout": jax.random.key(1)})
  jax.tree_util.tree_map(np.testing.assert_array_equal, t1, t2)
  assert not np.array_equal(t1["fine"], t3["fine"])
  assert not np.array_equal(t1["fine"], e1["fine"])


def test_bad_inputs_and_config(tiny):
  cfg = tiny("seg_input=classes").model
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  with pytest.raises(ValueError, match="class indices"):
    model.init(jax.random.key(0), image, image)
  with pytest.raises(ValueError, match="fusion"):
    models.build_model(tiny("fusion=concat").model).init(jax.random.key(0), image, seg)
  with pytest.raises(ValueError, match="needs a segmentation input"):
    models.build_model(tiny().model).init(jax.random.key(0), image, None)
  with pytest.raises(ValueError, match="unknown ViT variant"):
    vit.decode_variant("XL/16")
  with pytest.raises(ValueError, match="config model.variant='XL/16': must be a ViT variant"):
    config_schema.complete_section("model", dict(variant="XL/16", image_size=32, heads={"fine": 2}))
  with pytest.raises(ValueError, match="multiple of the patch size"):
    models.build_model(tiny().model).init(jax.random.key(0), image[:, :30, :30], image[:, :30, :30])


def test_attention_auto_follows_the_target_platform_and_rejects_unknown_names(tiny):
  for platform in ("cpu", "tpu"):
    for dtype in (jnp.float32, jnp.bfloat16):
      assert vit_layers.resolve_attention("auto", dtype, 64, platform) == "xla"
  # cuDNN when the target is a GPU in 16-bit, whatever backend this (CPU) process has.
  assert vit_layers.resolve_attention("auto", jnp.bfloat16, 64, "gpu") == "cudnn"
  assert vit_layers.resolve_attention("auto", jnp.float32, 64, "gpu") == "xla"
  assert vit_layers.resolve_attention("cudnn", jnp.float32, 64, "cpu") == "cudnn"  # an explicit choice is kept
  assert models.build_model(tiny().model, platform="tpu").platform == "tpu"
  assert models.build_model(tiny().model).platform == jax.devices()[0].platform
  with pytest.raises(ValueError, match="platform='mps'"):
    models.build_model(tiny().model, platform="mps")
  with pytest.raises(ValueError, match=r"config model.attention='flash': must be one of 'auto', 'xla', 'cudnn'"):
    tiny("attention=flash")
  cfg = tiny().model
  cfg.attention = "flash"  # past the config's check: the layer refuses it too
  model = models.build_model(cfg)
  image, seg = _batch(tiny().model)
  with pytest.raises(ValueError, match=r"config.model.attention='flash'"):
    model.init(jax.random.key(0), image, seg)


@pytest.mark.parametrize("tokens", [197, 50])
def test_fused_attention_padding_matches_plain_softmax_attention(tokens):
  # The cuDNN path pads odd lengths by one masked token; jax's XLA implementation takes the same lengths, so the
  # padding and masking are checked here, on CPU, against softmax(q k^T) v written out (values and gradients).
  b, h, dh = 2, 3, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (b, tokens, h, dh)) for i in range(3))

  def plain(q, k, v):
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

  def fused(q, k, v):
    return vit_layers.fused_attention(q, k, v, "xla")

  out = fused(q, k, v)
  assert out.shape == (b, tokens, h, dh)
  np.testing.assert_allclose(out, plain(q, k, v), atol=1e-5)
  grads = [jax.grad(lambda *a, fn=fn: (fn(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v) for fn in (fused, plain)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("fusion", ["cls_sum", "late_concat", "none"])
@pytest.mark.parametrize("train", [False, True])
def test_matmul_flop_count_matches_xla_cost_analysis(fusion, train):
  # MFU figures rest on models.flops (XLA's GPU cost analysis leaves out cuBLAS / cuDNN calls); on CPU XLA counts
  # every dot, so the two must agree up to the elementwise work the shape count leaves out.
  import optax  # pylint: disable=g-import-not-at-top
  from translocator_jax.models import flops  # pylint: disable=g-import-not-at-top
  cfg = config_schema.complete_section("model", dict(variant="S/16", depth=1, image_size=224, fusion=fusion,
                                                     heads={"coarse": 300, "fine": 900, "scene": 3}))
  model = models.build_model(cfg)
  image = jnp.zeros((2, 224, 224, 3), jnp.float32)  # 197 tokens: attention is 8% of a layer's matmuls
  params = jax.eval_shape(model.init, jax.random.key(0), image, image)["params"]

  def loss(p):
    logits = model.apply({"params": p}, image, image)
    return sum(optax.softmax_cross_entropy_with_integer_labels(v, jnp.zeros(2, jnp.int32)).mean()
               for v in logits.values())

  fn = jax.grad(loss) if train else loss
  cost = jax.jit(fn).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counted = 2 * flops.matmul_flops(models.model_kwargs(cfg), 224, train=train)
  assert counted == pytest.approx(float(cost["flops"]), rel=0.015)


@pytest.mark.parametrize("scan", [False, True])
def test_the_tpu_choices_compute_the_same_logits_and_gradients(tiny, scan):
  # Built for a TPU (float32 weight gradients, GELU recomputed in the backward pass) and run here on the CPU.
  cfg = tiny().model
  cfg.scan_layers = scan
  cfg.head_zeroinit = False  # so every layer gets a gradient
  image, seg = _batch(cfg)
  cpu, tpu = models.build_model(cfg, platform="cpu"), models.build_model(cfg, platform="tpu")
  params = cpu.init(jax.random.key(0), image, seg)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(tpu.init(jax.random.key(0), image, seg)["params"])

  def loss(p, model):
    return sum(jnp.sum(jnp.sin(l)) for l in model.apply({"params": p}, image, seg, train=True).values())

  want, got = jax.value_and_grad(loss)(params, cpu), jax.value_and_grad(loss)(params, tpu)
  mlp_grads = [g for path, g in jax.tree_util.tree_flatten_with_path(want[1])[0] if "MlpBlock" in str(path)]
  assert mlp_grads and all(float(jnp.abs(g).max()) > 0 for g in mlp_grads)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
