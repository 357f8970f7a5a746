"""Train state (a plain pytree) and the pure, jitted train step."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from translocator_jax import errors
from translocator_jax.data.pipeline import device_finish
from translocator_jax.runtime import sharding as sharding_lib
from translocator_jax.train import loss as loss_lib

# Batch keys the step reads; everything else (ids, source index) stays on the host.
STEP_KEYS = ("image", "seg", "cells", "scene", "latlon", "mask")

TrainState = dict  # {'step': int32 [], 'params': pytree, 'opt_state': pytree}


def dummy_inputs(model_config: ml_collections.ConfigDict, batch_size: int = 1) -> tuple[jax.Array, jax.Array]:
  """Zero image and seg inputs of the shapes the model expects (for init / shape inference)."""
  s = model_config.image_size
  image = jnp.zeros((batch_size, s, s, 3), jnp.float32)
  if model_config.seg_input == "classes":
    seg = jnp.zeros((batch_size, s, s), jnp.int32)
  else:
    seg = jnp.zeros((batch_size, s, s, 3), jnp.float32)
  return image, seg


def init_params(model: nn.Module, model_config: ml_collections.ConfigDict, rng: jax.Array, mesh: Mesh,
                fsdp_min_size: int = 2 ** 14) -> Any:
  """Model parameters, initialised directly into their shardings."""
  image, seg = dummy_inputs(model_config)

  def init_fn(key):
    return model.init({"params": key, "dropout": key}, image, seg, train=False)["params"]

  abstract = jax.eval_shape(init_fn, rng)
  shardings = sharding_lib.state_shardings(abstract, mesh, fsdp_min_size)
  return jax.jit(init_fn, out_shardings=shardings)(rng)


def create_state(params: Any, tx: optax.GradientTransformation, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> tuple[TrainState, Any]:
  """(state, state shardings) from parameters: step 0 and a fresh optimizer state."""

  def make(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}

  abstract = jax.eval_shape(make, params)
  shardings = sharding_lib.state_shardings(abstract, mesh, fsdp_min_size)
  shardings["step"] = sharding_lib.replicated(mesh)
  state = jax.jit(make, out_shardings=shardings)(params)
  return state, shardings


def abstract_state(state_shardings: Any, template: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target of a checkpoint."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), template, state_shardings)


def crop_mean_logits(apply: Callable, image: jax.Array, seg: jax.Array) -> dict[str, jax.Array]:
  """apply(image, seg) -> head -> logits; with a crop axis (image [B, K, S, S, 3], the authors' ten-crop
  training) every crop goes through the model and each image's logits are the mean over its K crops."""
  if image.ndim != 5:
    return apply(image, seg)
  b, k = image.shape[:2]
  logits = apply(image.reshape((b * k,) + image.shape[2:]), seg.reshape((b * k,) + seg.shape[2:]))
  return {h: l.reshape((b, k) + l.shape[1:]).mean(axis=1) for h, l in logits.items()}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, *,
                    schedule: optax.Schedule, mesh: Mesh, state_shardings: Any,
                    cell_latlon: Mapping[str, np.ndarray] | None = None,
                    palette: np.ndarray | None = None) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics), jitted over `mesh` with the state donated.

  Batches may hold the pipeline's uint8 image and class map (train_loader's batches): the step turns them
  into the model's inputs (data.device_finish; `palette`, [K, 3] uint8, for seg_input='palette'). Float batches
  pass through.

  The dropout key is fold_in(seed, step): stateless, so a resumed run draws the same masks. With
  config.optim.grad_accum_steps = A > 1 the batch is cut into A interleaved micro-batches whose gradients are
  summed under one optimizer update.
  """
  heads = tuple(config.model.heads.keys())
  accum = config.optim.grad_accum_steps
  seed = config.seed
  cells = {k: jnp.asarray(v, jnp.float32) for k, v in (cell_latlon or {}).items()}
  finish = device_finish.DeviceFinish(config.model.seg_input, palette, sharding_lib.platform(mesh))

  def loss_fn(params, micro, n_valid, rng):
    image, seg = finish(micro["image"], micro["seg"])
    apply = lambda i, s: model.apply({"params": params}, i, s, train=True, rngs={"dropout": rng})
    with sharding_lib.weights_gathered_where_used(mesh):
      logits = crop_mean_logits(apply, image, seg)
    return loss_lib.multitask_loss(logits, micro, config.loss, cell_latlon=cells, n_valid=n_valid)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    params = state["params"]
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    n_valid = loss_lib.count_valid(batch, heads)
    if accum == 1:
      (loss, aux), grads = grad_fn(params, batch, n_valid, rng)
    else:
      b = batch["image"].shape[0]
      if b % accum:
        raise errors.ConfigError(f"batch size {b} (config.data.batch_size) is not a multiple of "
                                 f"config.optim.grad_accum_steps={accum}")
      # Row i goes to micro-batch i % accum: the sharded batch axis stays sharded.
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1), batch)

      def body(carry, xs):
        i, mb = xs
        (l, a), g = grad_fn(params, mb, n_valid, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, a, g)), None

      shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), n_valid, rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (loss, aux, grads), _ = jax.lax.scan(body, (zeros[0][0], zeros[0][1], zeros[1]),
                                           (jnp.arange(accum), micro))
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"])}
    for h in heads:
      count = jnp.maximum(aux[f"{h}_count"], 1.0)
      metrics[f"loss_{h}"] = aux[f"{h}_loss_sum"] / count
      metrics[f"acc_{h}"] = aux[f"{h}_correct"] / count
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    return new_state, metrics

  batch_sh = sharding_lib.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))
