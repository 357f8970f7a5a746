"""The layers a ViT block is made of, with the parameter names of the original ViT checkpoints: Dense (float32
params, matmul in the compute dtype, float32 gradients), multi-head attention with q/k/v fused at apply time,
the MLP and the pre-norm encoder block. Implementation choices read the platform the model is compiled for.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax import errors

Dtype = Any


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


def affine(x: jax.Array, w: jax.Array, b: jax.Array, dtype: Dtype, platform: str) -> jax.Array:
  """x @ w + b over the last axis of x in `dtype`; w and b stay float32 in storage and get float32 gradients."""
  return _matmul(x.astype(dtype), used_whole(w), used_whole(b), jnp.dtype(dtype), platform)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _matmul(x: jax.Array, w: jax.Array, b: jax.Array, dtype: Any, platform: str) -> jax.Array:
  """jnp.dot(x, w.astype(dtype)) + b.astype(dtype) with a hand-written backward (same values as autodiff):

  - the weight and bias gradients accumulate and leave in float32 (`preferred_element_type`), so under a 16-bit
    dtype the cross-device gradient sums that XLA places at these reductions run in float32, not in bfloat16;
  - on a CPU it is written as a plain [K, M] x [M, N] dot: autodiff's dW = x^T dy contracts the lhs's first
    axis, which XLA:CPU's XNNPACK/YNNPACK dot fusion does not take (slower backward: benchmarks/README.md).
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
    return affine(x, kernel, bias, self.dtype, self.platform)


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
  cuDNN's is the faster on an H200 (benchmarks/README.md).
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
    qkv = affine(x, w_qkv, b_qkv, self.dtype, self.platform).reshape(b, n, 3, h, dh)
    if resolve_attention(self.attention, self.dtype, dh, self.platform) == "cudnn":
      # The scale is already folded into the query.
      ctx = fused_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], "cudnn").reshape(b, n, d)
    else:
      # Heads-major [3, B, H, N, Dh] once, so both attention matmuls are plain batched matmuls (the einsums on
      # [B, N, H, Dh] made XLA:CPU transpose inside each).
      q, k, v = qkv.transpose(2, 0, 3, 1, 4)
      logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
      ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return affine(ctx, wo.reshape(d, d), bo, self.dtype, self.platform)


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
