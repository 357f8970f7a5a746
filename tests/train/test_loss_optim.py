"""Loss (ignored labels, smoothing, haversine smoothing), optimizer (decay mask, schedule), grad accumulation."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from translocator_jax import models
from translocator_jax.data.pipeline import synthetic
from translocator_jax.geo import distance
from translocator_jax.runtime import config_io, config_schema
from translocator_jax.runtime import sharding as sharding_lib
from translocator_jax.train import loss as loss_lib
from translocator_jax.train import optimizer as optim_lib
from translocator_jax.train import step as step_lib

SYNTHETIC = __file__.replace("test_loss_optim.py", "synthetic_config.py")


def _loss_config(**kw):
  base = dict(weights={"coarse": 1.0, "middle": 1.0, "fine": 2.0, "scene": 0.5}, label_smoothing=0.0,
              haversine_tau_km=0.0)
  return ml_collections.ConfigDict({**base, **kw})


def _batch(rng, b=6):
  return {"cells": rng.integers(0, 5, (b, 3)).astype(np.int32), "scene": rng.integers(0, 3, b).astype(np.int32),
          "latlon": np.stack([rng.uniform(-50, 50, b), rng.uniform(-170, 170, b)], 1).astype(np.float32),
          "mask": np.ones(b, bool)}


def _logits(rng, b=6):
  return {"coarse": rng.normal(size=(b, 5)), "middle": rng.normal(size=(b, 5)), "fine": rng.normal(size=(b, 5)),
          "scene": rng.normal(size=(b, 3))}


def _np_ce(logits, labels):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def test_unlabelled_and_padded_rows_are_ignored():
  rng = np.random.default_rng(0)
  batch, logits = _batch(rng), _logits(rng)
  batch["cells"][1, 2] = -1   # no fine cell
  batch["scene"][[0, 3]] = -1  # unknown scene
  batch["mask"][5] = False    # padding
  total, _ = loss_lib.multitask_loss(logits, batch, _loss_config())
  expected = 0.0
  for head, w, labels in [("coarse", 1.0, batch["cells"][:, 0]), ("middle", 1.0, batch["cells"][:, 1]),
                          ("fine", 2.0, batch["cells"][:, 2]), ("scene", 0.5, batch["scene"])]:
    keep = (labels >= 0) & batch["mask"]
    expected += w * _np_ce(logits[head][keep], labels[keep]).mean()
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_label_smoothing_matches_optax():
  rng = np.random.default_rng(1)
  batch, logits = _batch(rng), _logits(rng)
  total, _ = loss_lib.multitask_loss(logits, batch, _loss_config(label_smoothing=0.1))
  expected = 0.0
  for head, w, labels in [("coarse", 1.0, batch["cells"][:, 0]), ("middle", 1.0, batch["cells"][:, 1]),
                          ("fine", 2.0, batch["cells"][:, 2]), ("scene", 0.5, batch["scene"])]:
    n = logits[head].shape[1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, n), 0.1)
    expected += w * float(optax.softmax_cross_entropy(logits[head], targets).mean())
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_haversine_smoothing_targets():
  cells = np.array([[0.0, 0.0], [0.0, 10.0], [40.0, 0.0], [-30.0, 100.0]], np.float32)
  true = np.array([[1.0, 2.0], [35.0, 5.0]], np.float32)
  labels = np.array([0, 2], np.int32)
  tau = 500.0
  got = np.asarray(loss_lib.soft_targets(jnp.asarray(labels), 4, true_latlon=jnp.asarray(true),
                                         cell_latlon=jnp.asarray(cells), haversine_tau_km=tau))
  for b in range(2):
    d = distance.haversine_km_numpy(np.repeat(true[b:b + 1], 4, 0), cells)
    w = np.exp(-(d - d[labels[b]]) / tau)
    np.testing.assert_allclose(got[b], w / w.sum(), rtol=1e-3, atol=1e-6)
  assert np.all(got.argmax(1) == labels)  # here the true cell is the nearest one


def test_weight_decay_mask_and_schedule():
  params = {"Transformer": {"encoderblock_0": {"MlpBlock_0": {"Dense_0": {"kernel": 1, "bias": 2}},
                                               "LayerNorm_0": {"scale": 3, "bias": 4}}},
            "embedding": {"kernel": 5, "bias": 6}, "cls": 7, "head_fine": {"kernel": 8, "bias": 9}}
  mask = optim_lib.decay_mask(params)
  flat = {optim_lib.param_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert {k for k, v in flat.items() if v} == {"Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
                                               "embedding/kernel", "head_fine/kernel"}
  optim = config_schema.complete_section("optim", dict(name="sgd", learning_rate=0.1, warmup_steps=10))
  sched = optim_lib.make_schedule(optim, 110)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 60, 110)], [0.0, 0.05, 0.1, 0.05, 0.0],
                             atol=1e-6)


def test_decay_applies_to_kernels_only():
  optim = config_schema.complete_section("optim", dict(name="sgd", learning_rate=1.0, warmup_steps=0,
                                                      weight_decay=0.5, momentum=0.0, clip_norm=0.0))
  tx, _ = optim_lib.make_optimizer(optim, 10)
  params = {"d": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["d"]["kernel"], -0.5 * np.ones(3))
  np.testing.assert_allclose(updates["d"]["bias"], np.zeros(3))


def test_gradient_accumulation_equals_full_batch():
  config = config_io.load_config(SYNTHETIC)
  config.model.dropout = 0.0
  config.optim.update(name="sgd", warmup_steps=0, learning_rate=0.5, momentum=0.9)  # updates linear in grads
  mesh = sharding_lib.make_mesh()
  model = models.build_model(config.model)
  tx, sched = optim_lib.make_optimizer(config.optim, 10)
  batch = next(synthetic.SyntheticIterator(config, 8))
  batch["cells"][2, 1] = -1  # unequal label counts across micro-batches
  batch = sharding_lib.put_batch({k: batch[k] for k in step_lib.STEP_KEYS}, mesh)
  results = []
  params = step_lib.init_params(model, config.model, jax.random.key(0), mesh, False)
  for accum in (1, 4):
    config.optim.grad_accum_steps = accum
    state, shardings = step_lib.create_state(params, tx, mesh, False)
    train_step = step_lib.make_train_step(model, tx, config, schedule=sched, mesh=mesh, state_shardings=shardings)
    state, metrics = train_step(state, batch)
    results.append((jax.device_get(state["params"]), float(metrics["loss"]), float(metrics["grad_norm"])))
  (p1, l1, g1), (p4, l4, g4) = results
  np.testing.assert_allclose(l4, l1, rtol=1e-5)
  np.testing.assert_allclose(g4, g1, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p4)
  assert not np.allclose(p1["head_fine"]["kernel"], jax.device_get(params)["head_fine"]["kernel"])


def test_step_on_uint8_batches_equals_step_on_host_finished_batches():
  # train_loader hands the step uint8 photos and class maps; the step's lookups must give the
  # same update as the float32 inputs the host would have made (augment.normalize / seg_to_model_input).
  from translocator_jax.data.pipeline import augment  # pylint: disable=g-import-not-at-top
  config = config_io.load_config(SYNTHETIC)
  config.optim.update(warmup_steps=0)  # a real update at step 0
  mesh = sharding_lib.make_mesh()
  model = models.build_model(config.model)
  tx, sched = optim_lib.make_optimizer(config.optim, 10)
  rng = np.random.default_rng(4)
  palette = rng.integers(0, 256, (int(config.model.num_seg_classes), 3)).astype(np.uint8)
  s = int(config.model.image_size)
  raw = {"image": rng.integers(0, 256, (8, s, s, 3)).astype(np.uint8),
         "seg": rng.integers(0, len(palette), (8, s, s)).astype(np.uint8), **_batch(rng, 8)}
  host = dict(raw, image=augment.normalize(raw["image"]), seg=augment.seg_to_model_input(raw["seg"], "palette",
                                                                                           palette))
  params = step_lib.init_params(model, config.model, jax.random.key(0), mesh, False)
  results = []
  for batch in (raw, host):
    state, shardings = step_lib.create_state(params, tx, mesh, False)
    train_step = step_lib.make_train_step(model, tx, config, schedule=sched, mesh=mesh, state_shardings=shardings,
                                          palette=palette)
    state, metrics = train_step(state, sharding_lib.put_batch({k: batch[k] for k in step_lib.STEP_KEYS}, mesh))
    results.append((jax.device_get(state["params"]), float(metrics["loss"])))
  (p_raw, l_raw), (p_host, l_host) = results
  assert l_raw == l_host
  jax.tree.map(np.testing.assert_array_equal, p_raw, p_host)
  assert not np.array_equal(p_raw["head_fine"]["kernel"], jax.device_get(params)["head_fine"]["kernel"])


def test_the_authors_schedule_gives_their_rates_per_group():
  config = config_io.load_config("configs/translocator_b16_mp16.py:authors")
  total, warmup = config.train.total_steps, config.optim.warmup_steps
  assert warmup == 2 * (4_723_695 // config.data.batch_size)
  rates = optim_lib.group_schedules(config.optim, total)
  # Their adjust_learning_rate: 0.1 * step / warmup, then 0.1 * q + 0.0001 * (1 - q), q the cosine; x 0.2 / 0.0048.
  for group, factor in (("weights", 0.2), ("biases", 0.0048)):
    np.testing.assert_allclose(float(rates[group](0)), 0.0)
    np.testing.assert_allclose(float(rates[group](warmup // 2)), factor * 0.05, rtol=1e-5)
    np.testing.assert_allclose(float(rates[group](warmup)), factor * 0.1, rtol=1e-5)
    np.testing.assert_allclose(float(rates[group](total)), factor * 1e-4, rtol=1e-3)
    mid = warmup + (total - warmup) // 2
    np.testing.assert_allclose(float(rates[group](mid)), factor * (0.1 * 0.5 + 1e-4 * 0.5), rtol=1e-4)
  assert dict(config.loss.weights) == {"coarse": 0.5, "middle": 0.3, "fine": 0.2, "scene": 1.0}


def test_two_groups_update_with_their_own_rates_and_decay():
  optim = config_schema.complete_section("optim", {
      "name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "decay_regex": ".",
      "warmup_steps": 0, "end_lr_factor": 0.001, "lr_multipliers": {"weights": 0.2, "biases": 0.0048}})
  tx, _ = optim_lib.make_optimizer(optim, 100)
  params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 4.0)}}
  grads = {"dense": {"kernel": jnp.full((2, 3), 1.0), "bias": jnp.full((3,), 1.0)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Step 0 after no warm-up: the base rate 0.1; torch SGD: -lr * (grad + wd * param), momentum buffer = that.
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.02 * (1.0 + 1e-4 * 2.0), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], -0.00048 * (1.0 + 1e-4 * 4.0), rtol=1e-6)


def test_parameter_groups_are_the_same_in_the_scanned_layout():
  config = config_io.load_config(SYNTHETIC)
  config.model.depth = 3
  config.model.fusion_per_layer = True
  image, seg = step_lib.dummy_inputs(config.model)

  def labels(scan):
    config.model.scan_layers = scan
    model = models.build_model(config.model)
    shapes = jax.eval_shape(lambda k: model.init(k, image, seg)["params"], jax.random.key(0))
    groups = optim_lib.param_groups(shapes)
    flat = jax.tree_util.tree_flatten_with_path(groups)[0]
    # One layer's name for both layouts: encoderblock_1 / fusion_2 -> encoderblock / fusion_layers.
    name = lambda p: re.sub(r"encoderblock_\d+", "encoderblock", re.sub(r"fusion_\d+", "fusion_layers", p))
    return {(name(optim_lib.param_path_str(path)), g) for path, g in flat}

  per_layer, scanned = labels(False), labels(True)
  assert per_layer == scanned
  assert ("rgb/Transformer/encoderblock/MlpBlock_3/Dense_0/bias", "biases") in scanned
  assert ("rgb/Transformer/encoderblock/MlpBlock_3/Dense_0/kernel", "weights") in scanned
