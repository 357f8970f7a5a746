"""The model FLOPs MFU is defined on: matmul FLOPs of one image through TransLocator, counted from its shapes.

XLA's cost analysis counts them too on a CPU (tests check the two agree), but on a GPU it leaves out the cuBLAS and
cuDNN calls, so accelerator utilisation figures (benchmarks/model_step.py) use this count.
"""
from __future__ import annotations

from typing import Any, Mapping


def matmul_flops(kw: Mapping[str, Any], image_size: int, train: bool) -> float:
  """2 FLOPs per multiply-add of one image; `kw` = models.model_kwargs(config.model) (seg_input 'palette').

  Training counts the forward, then twice it for the backward (input and weight gradients), less the patch
  embedding's input gradient: the image needs none. Elementwise work (norms, GELU, softmax) is left out.
  """
  d, m, depth, p = kw["width"], kw["mlp_dim"], kw["depth"], kw["patch_size"]
  patches = (image_size // p) ** 2
  n = patches + 1
  per_layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m  # qkv, attention, out, MLP
  embed = 2 * patches * (p * p * 3) * d
  stream = embed + depth * per_layer
  streams = 1 if kw["fusion"] == "none" else 2
  fusion = depth * 3 * 2 * d * d if kw["fusion"] == "cls_sum" else 0  # f on both CLS tokens and g, per layer
  rep = 2 * d if kw["fusion"] == "late_concat" else d
  heads = 2 * rep * sum(n_classes for _, n_classes in kw["heads"])
  forward = streams * stream + fusion + heads
  return float(3 * forward - streams * embed if train else forward)
