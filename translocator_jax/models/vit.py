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
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax import errors

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


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
  # Original ViT (flax nn.gelu) uses the tanh form; HF ViT uses exact erf.
  return nn.gelu(x, approximate=approximate)


PLATFORMS = ("cpu", "gpu", "tpu")


def check_platform(platform: str) -> str:
  """The platform a model is built for ('cpu', 'gpu', 'tpu'): the devices its program is compiled for (the
  mesh's), which differ from the process's own backend when compiling for a TPU pod from a CPU host."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform={platform!r}; expected one of {PLATFORMS}")
  return platform


def used_whole(w: jax.Array) -> jax.Array:
  """`w` gathered whole where it is used, when the model is traced under a mesh of several devices (the train step
  enters its mesh when parameters are split over 'fsdp': runtime.sharding.weights_gathered_where_used); a no-op
  otherwise.

  Weights split over 'fsdp' are all-gathered here, one at a time, and their gradients reduce-scattered back, while
  activations stay split by batch (left to propagation XLA split activations like the weights and moved them
  between chips around every matmul). Inside a remat'd block the gather is redone in the backward pass, so no
  whole weight stays live from the forward one: gathering every weight once at the top of the step kept them all.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return w
  return jax.lax.with_sharding_constraint(w, jax.sharding.PartitionSpec())


def _dot(x: jax.Array, w: jax.Array, b: jax.Array, dtype: Dtype, platform: str) -> jax.Array:
  """x @ w + b over the last axis of x in `dtype`; w and b stay float32 in storage and get float32 gradients."""
  return _matmul(x.astype(dtype), used_whole(w), used_whole(b), jnp.dtype(dtype), platform)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _matmul(x: jax.Array, w: jax.Array, b: jax.Array, dtype: Any, platform: str) -> jax.Array:
  """jnp.dot(x, w.astype(dtype)) + b.astype(dtype) with a hand-written backward (same values as autodiff):

  - the weight and bias gradients accumulate and leave in float32 (`preferred_element_type`), so under a 16-bit
    dtype the cross-device gradient sums that XLA places at these reductions run in float32, not in bfloat16;
  - on a CPU it is written as a plain [K, M] x [M, N] dot: autodiff's dW = x^T dy contracts the lhs's first
    axis, which XLA:CPU's XNNPACK/YNNPACK dot fusion does not take (the S/16 MLP's backward ran ~30% slower).
    The smaller operand is transposed explicitly; the barrier stops the simplifier folding that transpose back.
  """
  return jnp.dot(x, w.astype(dtype)) + b.astype(dtype)


def _matmul_fwd(x, w, b, dtype, platform):
  w_cast = w.astype(dtype)
  return jnp.dot(x, w_cast) + b.astype(dtype), (x, w_cast)


def _matmul_bwd(dtype, platform, res, dy):
  x, w_cast = res
  dx = jnp.dot(dy, w_cast.T)
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  f32 = jnp.float32
  if platform != "cpu":
    dw = jax.lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())), preferred_element_type=f32)
  elif x2.shape[1] <= dy2.shape[1]:
    dw = jnp.dot(jax.lax.optimization_barrier(x2.T), dy2, preferred_element_type=f32)
  else:
    dw = jnp.dot(jax.lax.optimization_barrier(dy2.T), x2, preferred_element_type=f32).T
  return dx.astype(x.dtype), dw, jnp.sum(dy2, axis=0, dtype=f32)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """A Dense layer whose params are float32 and whose matmul runs in `dtype`; names kernel/bias like nn.Dense."""
  features: int
  dtype: Dtype = jnp.float32
  platform: str = "cpu"
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.normal(stddev=1e-6)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return _dot(x, kernel, bias, self.dtype, self.platform)


class _Params(nn.Module):
  """Holds a kernel and bias of given shapes (checkpoint layout) and returns them; the caller does the maths."""
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", self.kernel_init, self.kernel_shape, jnp.float32)
    bias = self.param("bias", self.bias_init, self.bias_shape, jnp.float32)
    return kernel, bias


# xavier_uniform over the flattened matrix, as nn.MultiHeadDotProductAttention (DenseGeneral) initialises.
_QKV_INIT = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))   # [D, H, Dh]
_OUT_INIT = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)   # [H, Dh, D]


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def resolve_attention(attention: str, dtype: Dtype, head_dim: int, platform: str) -> str:
  """'xla' or 'cudnn' for config.model.attention: 'auto' takes cuDNN's fused attention on a GPU in 16-bit
  (what it supports: fp16/bf16, head dim a multiple of 8 up to 128) and XLA's matmul + softmax elsewhere.

  H200, B/16 bfloat16, batch 256 (benchmarks/attention_impls.py, model_step.py): one attention layer's forward +
  backward 2.46 ms with cuDNN against 3.38 ms with XLA; the whole train step 1579 against 1353 images/s.
  """
  if attention not in ATTENTION_IMPLS:
    raise errors.ConfigError(f"config.model.attention={attention!r}; expected one of {ATTENTION_IMPLS}")
  if attention != "auto":
    return attention
  fits_cudnn = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
  return "cudnn" if platform == "gpu" and fits_cudnn else "xla"


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
  """softmax(q k^T) v through jax.nn.dot_product_attention, [B, N, H, Dh] in and out, no extra scale.

  cuDNN's fused (flash) training kernels take even sequence lengths only (ViT's 1 + 14*14 = 197 is odd), so an
  odd length is padded by one token that the sequence lengths mask out, and cut off again.
  """
  b, n = q.shape[:2]
  lengths = None
  if n % 2:
    q, k, v = (jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0))) for t in (q, k, v))
    lengths = jnp.full((b,), n, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, scale=1.0, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out[:, :n]


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with checkpoint-layout params: query/key/value kernel [D,H,Dh], out kernel [H,Dh,D]."""
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = "auto"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    h = self.num_heads
    dh = d // h
    wq, bq = _Params((d, h, dh), (h, dh), kernel_init=_QKV_INIT, name="query")()
    wk, bk = _Params((d, h, dh), (h, dh), kernel_init=_QKV_INIT, name="key")()
    wv, bv = _Params((d, h, dh), (h, dh), kernel_init=_QKV_INIT, name="value")()
    wo, bo = _Params((h, dh, d), (d,), kernel_init=_OUT_INIT, name="out")()
    scale = 1.0 / np.sqrt(dh).astype(np.float32)
    # One [D, 3*D] matmul instead of three; the softmax scale goes into the (small) query weights.
    w_qkv = jnp.concatenate([wq * scale, wk, wv], axis=1).reshape(d, 3 * d)
    b_qkv = jnp.concatenate([bq * scale, bk, bv], axis=0).reshape(3 * d)
    qkv = _dot(x, w_qkv, b_qkv, self.dtype, self.platform).reshape(b, n, 3, h, dh)
    if resolve_attention(self.attention, self.dtype, dh, self.platform) == "cudnn":
      # The scale is already folded into the query.
      ctx = fused_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], "cudnn").reshape(b, n, d)
    else:
      # Heads-major [3, B, H, N, Dh] once, so both attention matmuls are plain batched matmuls (the einsums on
      # [B, N, H, Dh] made XLA:CPU transpose inside each: ~2-4x slower forward on S/16).
      q, k, v = qkv.transpose(2, 0, 3, 1, 4)
      logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
      ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return _dot(ctx, wo.reshape(d, d), bo, self.dtype, self.platform)


class MlpBlock(nn.Module):
  """Dense_0 -> GELU -> Dense_1, as in the original ViT."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  gelu_approximate: bool = True
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d = x.shape[-1]
    y = Dense(self.mlp_dim, dtype=self.dtype, platform=self.platform, name="Dense_0")(x)
    y = gelu(y, self.gelu_approximate)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = Dense(d, dtype=self.dtype, platform=self.platform, name="Dense_1")(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then + MLP(LN(.)). LayerNorms run in float32."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  attention: str = "auto"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ln = dict(epsilon=self.ln_epsilon, dtype=jnp.float32, param_dtype=jnp.float32)
    y = nn.LayerNorm(name="LayerNorm_0", **ln)(x)
    y = MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype, attention=self.attention,
                                     platform=self.platform, name="MultiHeadDotProductAttention_1")(y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    x = x + y.astype(jnp.float32)
    y = nn.LayerNorm(name="LayerNorm_2", **ln)(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, dropout=self.dropout, gelu_approximate=self.gelu_approximate,
                 platform=self.platform, name="MlpBlock_3")(y, train)
    return x + y.astype(jnp.float32)


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
    return x + used_whole(pe)


class Transformer(nn.Module):
  """The `Transformer` scope: position embedding, the blocks and the final norm, callable piece by piece.

  scan_layers: the blocks are one stacked `encoderblock` scope run by `blocks` under nn.scan (see the module
  docstring); `block(i, ...)` is then refused, and a model that interleaves streams scans `encoderblock` itself.
  """
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

  def setup(self):
    self.posembed_input = AddPositionEmbs()
    block = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype, dropout=self.dropout,
                 ln_epsilon=self.ln_epsilon, gelu_approximate=self.gelu_approximate, attention=self.attention,
                 platform=self.platform)
    if self.scan_layers:
      # Plain here: the scan (and its remat) wraps the whole step, in `layers` or in the caller's own step.
      self.encoderblock = Encoder1DBlock(**block)
      self.layers = scan_over_depth(_StreamStep, self.depth, self.remat, self.remat_policy)(self.encoderblock)
    else:
      # static_argnums counts self: (x=1, train=2).
      block_cls = (nn.remat(Encoder1DBlock, static_argnums=(2,), policy=checkpoint_policy(self.remat_policy))
                   if self.remat else Encoder1DBlock)
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


class ViTEncoder(nn.Module):
  """One ViT stream without a head: image [B,S,S,C] -> tokens [B,1+N,D] (CLS first), after encoder_norm.

  Use `embed`, `block(i, ...)` and `norm` to run it layer by layer (TransLocator does, to fuse CLS tokens); with
  scan_layers=True the layers are scanned (`blocks` runs them; TransLocator scans Transformer.encoderblock).
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_layers: bool = False
  attention: str = "auto"
  platform: str = "cpu"

  def setup(self):
    self.embedding = _PatchEmbed(self.width, self.patch_size, dtype=self.dtype, platform=self.platform)
    self.cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
    self.Transformer = Transformer(  # pylint: disable=invalid-name  (checkpoint scope name)
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
        dropout=self.dropout, ln_epsilon=self.ln_epsilon, gelu_approximate=self.gelu_approximate,
        remat=self.remat, remat_policy=self.remat_policy, scan_layers=self.scan_layers, attention=self.attention,
        platform=self.platform)

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
    y = _dot(x, kernel.reshape(p * p * c, self.width), bias, self.dtype, self.platform)
    return y.astype(jnp.float32)
