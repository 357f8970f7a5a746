"""Scanned layers (config.model.scan_layers): same numbers as the per-layer model, layout conversion, loading,
checkpoints of either layout, and one traced layer whatever the depth."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from translocator_jax import models
from translocator_jax.models import load
from translocator_jax.runtime import checkpoints
from translocator_jax.runtime import config_io, config_schema

SMALL = "head_zeroinit=False,depth=3,image_size=16"   # width 32, 3 layers, 16 px, patch 8: 4 patches


def _cfg(tiny, arg="", **model):
  cfg = tiny(",".join(filter(None, (SMALL, arg)))).model
  for k, v in model.items():
    cfg[k] = v
  return cfg


def _batch(cfg, b=2, seed=0):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(b, cfg.image_size, cfg.image_size, 3)), jnp.float32)
  if cfg.get("seg_input", "palette") == "classes":
    return image, jnp.asarray(rng.integers(0, cfg.num_seg_classes, size=(b, cfg.image_size, cfg.image_size)))
  return image, jnp.asarray(rng.normal(size=image.shape), jnp.float32)


def _random_params(module, *args, seed=0):
  """Random params of `module`'s shapes, every one mattering (LayerNorm scales near 1, biases nonzero): built
  from eval_shape, since compiling the random initialisers costs seconds per model here."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]

  def one(path, leaf):
    name, shape = str(path[-1].key), leaf.shape
    if name == "scale":
      return (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    fan_in = shape[0] if name == "kernel" and len(shape) == 3 and shape[0] > shape[1] else (
        int(np.prod(shape[:-1])) if len(shape) > 1 else 1)
    scale = 1 / np.sqrt(fan_in) if name == "kernel" else 0.1
    return (scale * rng.normal(size=shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(one, flax.core.unfreeze(shapes))


def _assert_trees_close(a, b, tol=1e-5):
  """Each array within `tol` of its own largest value (float32 sums in another order differ at that scale), or of
  1% of the tree's largest: some gradients are zero up to rounding (the key bias: softmax ignores it)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  floor = 1e-2 * max(float(np.abs(np.asarray(y)).max()) for y in jax.tree.leaves(b))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=0, atol=tol * max(float(np.abs(np.asarray(y)).max()), floor)), a, b)


def _loss(params, model, image, seg):
  out = model.apply({"params": params}, image, seg, train=True)   # dropout 0: the same values as eval
  return sum(jnp.sum(v ** 2) for v in out.values()), out


# One compile gives the logits and the gradients (eager applies of a scan compile it on every call).
_grad = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=1)
_apply = jax.jit(lambda variables, model, *args, **kw: model.apply(variables, *args, **kw),
                 static_argnums=1, static_argnames=("train", "mutable"))


def _check_scanned_matches(cfg, cfg_s_list):
  """The scanned models of cfg_s_list give cfg's logits, loss and gradients on cfg's params, converted."""
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  params = _random_params(model, image, seg)
  params_s = models.scan_params(params, cfg.depth)
  (loss, want), grads = _grad(params, model, image, seg)
  grads = models.scan_params(jax.device_get(grads), cfg.depth)
  for cfg_s in cfg_s_list:
    model_s = models.build_model(cfg_s)
    # The scanned model's own init has exactly the converted tree's names and shapes.
    init_s = jax.eval_shape(model_s.init, jax.random.key(0), image, seg)["params"]
    assert jax.tree.map(jnp.shape, flax.core.unfreeze(init_s)) == jax.tree.map(np.shape, params_s)
    (loss_s, got), grads_s = _grad(params_s, model_s, image, seg)
    _assert_trees_close(got, want)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
    _assert_trees_close(grads_s, grads)
    assert float(jnp.abs(grads_s["rgb"]["Transformer"]["encoderblock"]["MlpBlock_3"]["Dense_0"]["kernel"][0]).max()) > 0


@pytest.mark.parametrize("fusion", ["fusion=cls_sum", "fusion=cls_sum,fusion_per_layer=True", "fusion=late_concat",
                                    "fusion=none"])
def test_scanned_matches_per_layer_values_and_gradients(tiny, fusion):
  # Against the per-layer model without remat (which test_translocator shows equal to the one with it).
  _check_scanned_matches(_cfg(tiny, fusion), [_cfg(tiny, fusion, scan_layers=True, remat=False),
                                              _cfg(tiny, fusion, scan_layers=True, remat=True)])


def test_remat_policy_is_honoured_in_both_layouts(tiny):
  kw = dict(remat=True, remat_policy="dots_with_no_batch_dims_saveable")
  _check_scanned_matches(_cfg(tiny, **kw), [_cfg(tiny, scan_layers=True, **kw)])


def test_intermediates_are_the_same_in_both_layouts(tiny):
  cfg, cfg_s = _cfg(tiny), _cfg(tiny, scan_layers=True)
  image, seg = _batch(cfg)
  params = _random_params(models.build_model(cfg), image, seg)
  _, state = _apply({"params": params}, models.build_model(cfg), image, seg, mutable=("intermediates",))
  _, state_s = _apply({"params": models.scan_params(params)}, models.build_model(cfg_s), image, seg,
                      mutable=("intermediates",))
  want, got = state["intermediates"], flax.core.unfreeze(state_s["intermediates"])
  assert sorted(got) == sorted(want) == ["pre_logits"] + [f"rgb_cls_{i}" for i in range(3)]
  _assert_trees_close(got, want)


def test_scanned_single_encoder_matches_and_refuses_per_layer_calls(tiny):
  cfg, cfg_s = _cfg(tiny), _cfg(tiny, scan_layers=True, remat=True)
  image, _ = _batch(cfg)
  enc, enc_s = models.build_encoder(cfg), models.build_encoder(cfg_s)
  params = _random_params(enc, image)
  params_s = models.scan_params(params)
  assert set(params_s["Transformer"]) == {"encoderblock", "encoder_norm", "posembed_input"}
  np.testing.assert_allclose(_apply({"params": params_s}, enc_s, image), _apply({"params": params}, enc, image),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"layers are scanned .* blocks\(\)"):
    enc_s.apply({"params": params_s}, image, method=lambda m, x: m.block(0, m.embed(x)))


def test_dropout_in_the_scan_follows_the_key(tiny):
  cfg = _cfg(tiny, scan_layers=True, dropout=0.3)
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  variables = {"params": _random_params(model, image, seg)}
  run = jax.jit(lambda key, train: model.apply(variables, image, seg, train=train,
                                               rngs={"dropout": jax.random.key(key)})["fine"], static_argnums=1)
  np.testing.assert_array_equal(run(0, True), run(0, True))
  assert not np.array_equal(run(0, True), run(1, True))
  assert not np.array_equal(run(0, True), run(0, False))


def test_scan_unscan_round_trip_exactly(tiny):
  for arg in ("fusion=cls_sum,fusion_per_layer=True", "fusion=cls_sum", "fusion=none"):
    cfg = _cfg(tiny, arg)
    image, seg = _batch(cfg)
    params = _random_params(models.build_model(cfg), image, seg)
    scanned = models.scan_params(params, 3)
    assert models.is_scanned(scanned) and not models.is_scanned(params)
    flat = flax.traverse_util.flatten_dict(scanned, sep="/")
    assert "rgb/Transformer/encoderblock/LayerNorm_0/scale" in flat
    assert flat["rgb/Transformer/encoderblock/MultiHeadDotProductAttention_1/query/kernel"].shape == (3, 32, 2, 16)
    if cfg.fusion_per_layer:
      assert flat["fusion_layers/f/Dense_0/kernel"].shape == (3, 32, 32) and "fusion_0" not in scanned
    elif cfg.fusion == "cls_sum":
      assert flat["fusion/f/Dense_0/kernel"].shape == (32, 32)   # shared: the same in both layouts
    back = models.unscan_params(scanned)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    jax.tree.map(np.testing.assert_array_equal, models.scan_params(back), scanned)
    on_device = models.scan_params(jax.tree.map(jnp.asarray, params))   # jax arrays stay jax arrays
    assert isinstance(on_device["rgb"]["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"], jax.Array)
    jax.tree.map(np.testing.assert_array_equal, on_device, scanned)
    jax.tree.map(np.testing.assert_array_equal, models.unscan_params(on_device), params)
    # Abstract trees convert too (shapes only).
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert jax.tree.map(np.shape, models.scan_params(abstract)) == jax.tree.map(np.shape, scanned)
  with pytest.raises(ValueError, match="already in the scanned layout"):
    models.scan_params(scanned)
  with pytest.raises(ValueError, match="already in the per-layer layout"):
    models.unscan_params(params)
  with pytest.raises(ValueError, match=r"encoderblock_\{i\} for i in \[0, 1, 2\]; expected i = 0..3 \(depth=4\)"):
    models.scan_params(params, 4)
  holey = {**params, "rgb": {**params["rgb"], "Transformer": {
      k: v for k, v in params["rgb"]["Transformer"].items() if k != "encoderblock_1"}}}
  with pytest.raises(ValueError, match=r"/rgb/Transformer has encoderblock_\{i\} for i in \[0, 2\]"):
    models.scan_params(holey)


def _npz(cfg, path, scanned=False):
  enc = models.build_encoder(cfg)
  params = _random_params(enc, jnp.zeros((1, cfg.image_size, cfg.image_size, 3)), seed=1)
  if scanned:
    params = models.scan_params(params)
  np.savez(path, **flax.traverse_util.flatten_dict(params, sep="/"), **{"head/kernel": np.ones((32, 10))})


@pytest.mark.parametrize("fusion", ["fusion=cls_sum,fusion_per_layer=True", "fusion=none"])
def test_pretrained_loads_into_the_scanned_layout(tiny, tmp_path, fusion):
  cfg, cfg_s = _cfg(tiny, fusion), _cfg(tiny, fusion, scan_layers=True)
  image, seg = _batch(cfg)
  params = _random_params(models.build_model(cfg), image, seg)
  _npz(cfg, tmp_path / "vit.npz")
  loaded, report = load.load_pretrained(params, tmp_path / "vit.npz", cfg)
  loaded_s, report_s = load.load_pretrained(models.scan_params(params), tmp_path / "vit.npz", cfg_s)
  jax.tree.map(np.testing.assert_array_equal, loaded_s, models.scan_params(loaded))
  for field in ("loaded", "left", "resampled", "unused", "notes"):  # per-layer (checkpoint) paths in both layouts
    assert sorted(getattr(report_s, field)) == sorted(getattr(report, field)), field
  assert "rgb/Transformer/encoderblock_2/LayerNorm_0/scale" in report.loaded and report.unused == ["head/kernel"]
  # A checkpoint saved from a scanned ViT (big_vision's scan=True layout) reads the same.
  _npz(cfg, tmp_path / "vit_scanned.npz", scanned=True)
  from_scanned, _ = load.load_pretrained(models.scan_params(params), tmp_path / "vit_scanned.npz", cfg_s)
  jax.tree.map(np.testing.assert_array_equal, from_scanned, loaded_s)
  out = _apply({"params": loaded_s}, models.build_model(cfg_s), image, seg)
  np.testing.assert_allclose(out["fine"], _apply({"params": loaded}, models.build_model(cfg), image, seg)["fine"],
                             rtol=1e-5, atol=1e-5)


def _lowered_size(tiny, depth, scan_layers):
  cfg = _cfg(tiny, f"depth={depth}", scan_layers=scan_layers, remat=True)
  model = models.build_model(cfg)
  image, seg = _batch(cfg)
  params = jax.eval_shape(model.init, jax.random.key(0), image, seg)["params"]
  grad = jax.grad(lambda p: _loss(p, model, image, seg)[0])
  return len(jax.jit(grad).lower(params).as_text())


def test_scanned_train_step_holds_one_layer_whatever_the_depth(tiny):
  # What scanning is for: the program (and its compile time) does not grow with depth.
  scanned = _lowered_size(tiny, 6, True) / _lowered_size(tiny, 2, True)
  per_layer = _lowered_size(tiny, 6, False) / _lowered_size(tiny, 2, False)
  assert scanned < 1.1, scanned
  assert per_layer > 2.0, per_layer   # the same measure sees the per-layer program grow


def test_config_keys_and_bad_policy(tiny):
  config = tiny()
  config_io.apply_overrides(config, ["model.scan_layers=True", "model.remat_policy=dots_saveable"])
  kw = models.model_kwargs(config.model)
  assert kw["scan_layers"] is True and kw["remat_policy"] == "dots_saveable"
  assert models.model_kwargs(tiny().model)["scan_layers"] is False
  without_policy = tiny().model.to_dict()
  without_policy.pop("remat_policy")  # the default when a config names none
  assert models.model_kwargs(config_schema.complete_section("model", without_policy))["remat_policy"] == \
      "nothing_saveable"
  with pytest.raises(ValueError, match=r"config model.remat_policy='dots': must be one of .*'dots_saveable'"):
    config_schema.complete_section("model", _cfg(tiny, remat_policy="dots"))


def test_checkpoints_of_either_layout(tiny, tmp_path):
  cfg = _cfg(tiny)
  config = tiny(SMALL + ",scan_layers=True")
  image, seg = _batch(cfg)
  params = _random_params(models.build_model(cfg), image, seg)
  ckpt = checkpoints.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, {"step": np.int32(1), "params": models.scan_params(params)}, None, config)
  ckpt.wait()
  # Inference builds the model from the checkpoint's own config, so a scanned checkpoint just runs.
  loaded = checkpoints.load_for_inference(tmp_path)
  restored_config, restored = loaded.config, loaded.params
  assert restored_config.model.scan_layers is True
  got = _apply({"params": restored}, models.build_model(restored_config.model), image, seg)["fine"]
  np.testing.assert_allclose(got, _apply({"params": params}, models.build_model(cfg), image, seg)["fine"],
                             rtol=1e-5, atol=1e-5)
  # Resuming training with the other layout is refused, naming the layouts and the setting that resumes.
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)}
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"scanned layout, the config's in the per-layer one: resume with "
                           r"--set model.scan_layers=True"):
    ckpt.restore_latest(abstract)
  ckpt.close()
  assert isinstance(restored_config, ml_collections.ConfigDict)
