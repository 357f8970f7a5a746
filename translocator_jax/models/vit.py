"""ViT encoder whose parameter names match the original ViT checkpoints (google-research/vision_transformer).

Layout of one encoder's params (so ViT-B_16.npz and the augreg files load by name):
  embedding/{kernel [p,p,C,D], bias}
  cls [1,1,D]
  Transformer/posembed_input/pos_embedding [1,N+1,D]
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
    LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1}
  Transformer/encoder_norm
With scan_layers=True the blocks are one scope, Transformer/encoderblock/..., every leaf stacked on a leading
[depth] axis and run by one nn.scan (models/layout.py converts between the two layouts): the program holds one
layer instead of `depth`, so its size and compile time do not grow with depth.

Speed notes (CPU): the patch embedding is a reshape + one matmul (same maths as the stride-p conv), and q/k/v
are fused into one matmul at apply time from the three checkpoint kernels, with the 1/sqrt(d) scale folded into
the query weights. The encoder exposes `embed`, `block` and `norm` so TransLocator can interleave two streams.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from translocator_jax import errors
from translocator_jax.models import layers as vit_layers

Dtype = Any

# Width, depth, MLP width and heads of the published ViT variants (Dosovitskiy et al.; Ti/S from DeiT/augreg).
VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


@dataclasses.dataclass(frozen=True)
class ViTShape:
  """The sizes of one encoder."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int


def decode_variant(variant: str, **overrides: int | None) -> ViTShape:
  """'B/16' -> ViTShape; `overrides` (width=..., depth=..., ...) replace fields when not None (tiny tests)."""
  try:
    name, patch = variant.split("/")
    sizes = dict(VARIANTS[name], patch_size=int(patch))
  except (ValueError, KeyError) as e:
    raise errors.ConfigError(f"unknown ViT variant {variant!r}; expected one of "
                             f"{[f'{v}/{p}' for v in VARIANTS for p in (16, 32)]} (any patch size works)") from e
  sizes.update({k: v for k, v in overrides.items() if v is not None})
  shape = ViTShape(**sizes)
  if shape.width % shape.num_heads:
    raise errors.ConfigError(f"width {shape.width} is not divisible by num_heads {shape.num_heads} "
                             "(config.model.variant, width, num_heads)")
  return shape


# jax.checkpoint_policies that take no arguments and suit a transformer layer: save nothing (recompute the whole
# layer in the backward pass), every matmul output, only the matmuls without batch dimensions (the weight
# matmuls, not attention's), or everything (remat without recomputation, for comparisons).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "everything_saveable")


def checkpoint_policy(name: str) -> Any:
  """The jax.checkpoint policy for config.model.remat_policy."""
  if name not in REMAT_POLICIES:
    raise errors.ConfigError(f"config.model.remat_policy={name!r}; expected one of {REMAT_POLICIES} "
                             "(names of jax.checkpoint_policies)")
  return getattr(jax.checkpoint_policies, name)


def scan_over_depth(step: type[nn.Module], depth: int, remat: bool, policy: str) -> type[nn.Module]:
  """`step` run `depth` times by one nn.scan, its params (and sown intermediates) stacked on a leading axis.

  `step.__call__(carry, shared, train)` -> (carry, per-layer output): `shared` (arrays every layer reads, or None)
  and the Python bool `train` are broadcast; the per-layer outputs come back stacked. Each layer draws its own
  'params' and 'dropout' keys. Bound modules passed to `step` as attributes are lifted too, so their params are
  the stacked ones, under their own scopes. With remat the step is recomputed in the backward pass under
  `policy`; CSE prevention is off, since inside a scan XLA cannot merge the recomputation into the forward.
  """
  if remat:
    step = nn.remat(step, static_argnums=(3,), prevent_cse=False, policy=checkpoint_policy(policy))  # self counts
  return nn.scan(step, variable_axes={"params": 0, "intermediates": 0},
                 split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast, nn.broadcast), length=depth)


class _StreamStep(nn.Module):
  """One layer of a single stream, for scan_over_depth."""
  block: nn.Module

  def __call__(self, x: jax.Array, shared: None, train: bool) -> tuple[jax.Array, None]:
    del shared
    return self.block(x, train), None


class AddPositionEmbs(nn.Module):
  """Learned position embedding, named posembed_input/pos_embedding as in the checkpoints."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], jnp.float32)
    return x + vit_layers.used_whole(pe)


class _LayerOptions(nn.Module):
  """The options of the encoder layers, shared by Transformer and ViTEncoder (which passes them on)."""
  depth: int
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_layers: bool = False
  attention: str = "auto"
  platform: str = "cpu"

  def layer_options(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(_LayerOptions)
            if f.name not in ("parent", "name")}


class Transformer(_LayerOptions):
  """The `Transformer` scope: position embedding, the blocks and the final norm, callable piece by piece.

  scan_layers: the blocks are one stacked `encoderblock` scope run by `blocks` under nn.scan (see the module
  docstring); `block(i, ...)` is then refused, and a model that interleaves streams scans `encoderblock` itself.
  """

  def setup(self):
    self.posembed_input = AddPositionEmbs()
    block = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype, dropout=self.dropout,
                 ln_epsilon=self.ln_epsilon, gelu_approximate=self.gelu_approximate, attention=self.attention,
                 platform=self.platform)
    if self.scan_layers:
      # Plain here: the scan (and its remat) wraps the whole step, in `layers` or in the caller's own step.
      self.encoderblock = vit_layers.Encoder1DBlock(**block)
      self.layers = scan_over_depth(_StreamStep, self.depth, self.remat, self.remat_policy)(self.encoderblock)
    else:
      # static_argnums counts self: (x=1, train=2).
      block_cls = (nn.remat(vit_layers.Encoder1DBlock, static_argnums=(2,), policy=checkpoint_policy(self.remat_policy))
                   if self.remat else vit_layers.Encoder1DBlock)
      for i in range(self.depth):
        setattr(self, f"encoderblock_{i}", block_cls(**block))
    self.encoder_norm = nn.LayerNorm(epsilon=self.ln_epsilon, dtype=jnp.float32, param_dtype=jnp.float32)
    self.dropout_layer = nn.Dropout(self.dropout)

  def add_posemb(self, x: jax.Array, train: bool) -> jax.Array:
    return self.dropout_layer(self.posembed_input(x), deterministic=not train)

  def block(self, i: int, x: jax.Array, train: bool) -> jax.Array:
    if self.scan_layers:
      raise ValueError("block(i): the layers are scanned (scan_layers=True) and run together by blocks(); "
                       "scan Transformer.encoderblock to interleave them with other work")
    return getattr(self, f"encoderblock_{i}")(x, train)

  def blocks(self, x: jax.Array, train: bool) -> jax.Array:
    """All `depth` blocks in turn."""
    if self.scan_layers:
      return self.layers(x, None, train)[0]
    for i in range(self.depth):
      x = self.block(i, x, train)
    return x

  def norm(self, x: jax.Array) -> jax.Array:
    return self.encoder_norm(x)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.norm(self.blocks(self.add_posemb(x, train), train))


class ViTEncoder(_LayerOptions):
  """One ViT stream without a head: image [B,S,S,C] -> tokens [B,1+N,D] (CLS first), after encoder_norm.

  Use `embed`, `block(i, ...)` and `norm` to run it layer by layer (TransLocator does, to fuse CLS tokens); with
  scan_layers=True the layers are scanned (`blocks` runs them; TransLocator scans Transformer.encoderblock).
  """
  width: int = dataclasses.field(kw_only=True)
  patch_size: int = dataclasses.field(kw_only=True)

  def setup(self):
    self.embedding = _PatchEmbed(self.width, self.patch_size, dtype=self.dtype, platform=self.platform)
    self.cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
    self.Transformer = Transformer(**self.layer_options())  # pylint: disable=invalid-name  (checkpoint scope)

  def embed(self, image: jax.Array, train: bool = False) -> jax.Array:
    """Patch tokens with CLS prepended and position embedding added: [B, 1+N, D] float32."""
    x = self.embedding(image)
    cls = jnp.broadcast_to(self.cls, (x.shape[0], 1, self.width))
    return self.Transformer.add_posemb(jnp.concatenate([cls, x], axis=1), train)

  def block(self, i: int, x: jax.Array, train: bool = False) -> jax.Array:
    return self.Transformer.block(i, x, train)

  def blocks(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.Transformer.blocks(x, train)

  def norm(self, x: jax.Array) -> jax.Array:
    return self.Transformer.norm(x)

  def __call__(self, image: jax.Array, train: bool = False) -> jax.Array:
    return self.norm(self.blocks(self.embed(image, train), train))


class _PatchEmbed(nn.Module):
  """Stride-p patch embedding with conv-layout params (kernel [p,p,C,D]) computed as reshape + one matmul."""
  width: int
  patch_size: int
  dtype: Dtype = jnp.float32
  platform: str = "cpu"

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    b, hh, ww, c = image.shape
    p = self.patch_size
    if hh % p or ww % p:
      raise errors.ConfigError(f"image size {hh}x{ww} is not a multiple of the patch size {p} "
                               "(config.model.image_size, config.model.variant / patch_size)")
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
    x = image.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (hh // p) * (ww // p), p * p * c)
    y = vit_layers.affine(x, kernel.reshape(p * p * c, self.width), bias, self.dtype, self.platform)
    return y.astype(jnp.float32)
