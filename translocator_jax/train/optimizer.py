"""The optax optimizer: SGD-momentum or AdamW, warmup + cosine, clipping, weight decay on kernels only."""
from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

from translocator_jax import errors
from translocator_jax.models import layout
from translocator_jax.runtime import config_schema

DEFAULT_DECAY_REGEX = config_schema.DEFAULT_DECAY_REGEX


def param_path_str(path) -> str:
  """'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' for a jax tree path."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def decay_mask(params: Any, regex: str = DEFAULT_DECAY_REGEX) -> Any:
  """Pytree of bools like `params`: True where the parameter's path matches `regex` (kernels by default)."""
  pattern = re.compile(regex)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(pattern.search(param_path_str(p))), params)


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak rate, then cosine decay to `optim.end_lr_factor` * peak at total_steps."""
  warmup = int(min(optim.warmup_steps, max(total_steps - 1, 0)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=float(optim.learning_rate),
      warmup_steps=warmup,
      decay_steps=max(int(total_steps), warmup + 1),
      end_value=float(optim.learning_rate) * float(optim.end_lr_factor),
  )


GROUPS = config_schema.LR_GROUPS  # parameters with two or more axes, and 1-D ones (biases, norm scales)


def param_groups(params: Any) -> Any:
  """Pytree of 'weights' / 'biases' labels like `params` (the authors' two torch parameter groups): by the axes
  of one layer's array, so a scanned layer's stacked biases [depth, D] are biases too."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: "biases" if jax.numpy.ndim(p) - layout.stacked_axes(param_path_str(path)) == 1
      else "weights", params)


def group_schedules(optim: ml_collections.ConfigDict, total_steps: int) -> dict[str, optax.Schedule]:
  """Each parameter group's learning rate: the schedule times optim.lr_multipliers[group] (1 without them)."""
  schedule = make_schedule(optim, total_steps)
  multipliers = {g: 1.0 for g in GROUPS} | dict(optim.lr_multipliers or {})
  return {g: (lambda m: (lambda step: m * schedule(step)))(float(multipliers[g])) for g in GROUPS}


def _base_optimizer(optim: ml_collections.ConfigDict, learning_rate: optax.Schedule
                    ) -> optax.GradientTransformation:
  regex = optim.decay_regex
  wd = float(optim.weight_decay)
  mask = lambda params: decay_mask(params, regex)
  name = optim.name
  if name == "sgd":
    parts = []
    if wd:
      # Coupled L2 decay (as torch SGD's weight_decay), on the parameters decay_regex names (kernels by default).
      parts.append(optax.add_decayed_weights(wd, mask=mask))
    parts.append(optax.sgd(learning_rate, momentum=float(optim.momentum) or None, nesterov=optim.nesterov))
    return optax.chain(*parts)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps), weight_decay=wd,
                       mask=mask)
  raise errors.ConfigError(f"config.optim.name: unknown optimizer {optim.name!r} (want 'sgd' or 'adamw')")


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by `optim.name` ('sgd' | 'adamw'); returns (tx, learning-rate schedule).

  optim.lr_multipliers {'weights': a, 'biases': b} gives the two parameter groups their own rates (schedule x a,
  schedule x b), as the authors' torch code does; the returned schedule is then the unscaled one.
  """
  schedule = make_schedule(optim, total_steps)
  parts = []
  if optim.clip_norm:
    parts.append(optax.clip_by_global_norm(float(optim.clip_norm)))
  if optim.lr_multipliers:
    rates = group_schedules(optim, total_steps)
    parts.append(optax.multi_transform({g: _base_optimizer(optim, rates[g]) for g in GROUPS}, param_groups))
  else:
    parts.append(_base_optimizer(optim, schedule))
  return optax.chain(*parts), schedule
