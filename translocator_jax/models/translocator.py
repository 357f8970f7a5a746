"""TransLocator: two ViT streams (RGB photo, segmentation map) with CLS-token fusion after every layer.

Params (top level):
  rgb/...            a ViTEncoder in the original checkpoint layout (embedding, cls, Transformer/...)
  seg/...            the same for the segmentation stream (absent with fusion='none')
  seg_classes/embedding [K, E]   only with seg_input='classes': class index -> E-dim pixel feature
  fusion/{f,g}/{LayerNorm_0,Dense_0}            shared f/g (default), or fusion_{i}/... per layer
  head_{name}/{kernel,bias}      one classifier per entry of config.model.heads

After block i: cls = g(f(cls_rgb) + f(cls_seg)) is written into both streams (patch tokens untouched), CrossViT
style. The pre-logits are the final fused CLS, normalised by each stream's encoder_norm and averaged (the two
norms see the same token, so both streams' final params are used and stay loadable). 'late_concat' skips the
per-layer fusion and concatenates the two normalised final CLS tokens; 'none' runs the RGB stream alone.

scan_layers=True runs the layers of both streams and the fusion as ONE nn.scan over depth (one step: rgb block i,
seg block i, fusion, write-back), so the program holds one layer whatever the depth. Its params keep the names
above except that the per-layer scopes are stacked on a leading [depth] axis:
  {rgb,seg}/Transformer/encoderblock/...    (for encoderblock_{i})
  fusion_layers/{f,g}/...                   (for fusion_{i}; a shared `fusion` is the same in both layouts)
models/layout.py converts params between the layouts (scan_params / unscan_params); load_pretrained fills either.

Intermediates: apply(..., mutable=['intermediates']) returns the RGB stream's CLS after each layer (after the
fusion write-back) as intermediates/rgb_cls_{i}, and the pre-logits as intermediates/pre_logits; the same in
both layouts (scanned, the step returns the CLS tokens stacked and they are sown per layer after the scan).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from translocator_jax import errors
from translocator_jax.models import layers as vit_layers
from translocator_jax.models import vit

FUSIONS = ("cls_sum", "late_concat", "none")
SEG_INPUTS = ("palette", "classes")
DTYPES = ("float32", "bfloat16")  # the matmuls' (parameters and LayerNorm stay float32)


class Projection(nn.Module):
  """LayerNorm -> GELU -> Linear (CrossViT's f and g)."""
  dtype: Any = jnp.float32
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(epsilon=self.ln_epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name="LayerNorm_0")(x)
    y = vit_layers.gelu(y, self.gelu_approximate)
    y = vit_layers.Dense(x.shape[-1], dtype=self.dtype, platform=self.platform, bias_init=nn.initializers.zeros,
                  name="Dense_0")(y)
    return y.astype(jnp.float32)


class CLSFusion(nn.Module):
  """cls = g(f(cls_a) + f(cls_b)), one f shared by both streams."""
  dtype: Any = jnp.float32
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  platform: str = "cpu"

  @nn.compact
  def __call__(self, cls_a: jax.Array, cls_b: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, ln_epsilon=self.ln_epsilon, gelu_approximate=self.gelu_approximate,
              platform=self.platform)
    f = Projection(name="f", **kw)
    g = Projection(name="g", **kw)
    return g(f(cls_a) + f(cls_b))


class _DualStep(nn.Module):
  """One scanned layer (vit.scan_over_depth): rgb block, seg block, fusion, the fused CLS written into both.

  The blocks (and a per-layer fusion) are the streams' own modules, passed in so that the scan lifts their
  scopes: their params are stacked where the streams keep them. A fusion shared by all layers must not be
  stacked, so its params come in as the broadcast `shared` argument and are applied functionally.
  """
  rgb_block: nn.Module
  seg_block: nn.Module | None        # None: fusion='none', the carry is the RGB tokens alone
  fusion_layer: nn.Module | None     # the per-layer fusion (scanned), or None
  fusion: str = "cls_sum"
  fusion_kw: Any = None              # CLSFusion's arguments, for the shared fusion's params in `shared`

  def __call__(self, carry, shared: Any, train: bool):
    if self.seg_block is None:
      x = self.rgb_block(carry, train)
      return x, x[:, 0]
    x, y = carry
    x = self.rgb_block(x, train)
    y = self.seg_block(y, train)
    if self.fusion == "cls_sum":
      if self.fusion_layer is not None:
        cls = self.fusion_layer(x[:, 0], y[:, 0])
      else:
        cls = CLSFusion(parent=None, **self.fusion_kw).apply({"params": shared}, x[:, 0], y[:, 0])
      x, y = _write_cls(cls, x), _write_cls(cls, y)
    return (x, y), x[:, 0]


def _write_cls(cls: jax.Array, tokens: jax.Array) -> jax.Array:
  return jnp.concatenate([cls[:, None], tokens[:, 1:]], axis=1)


class TransLocator(nn.Module):
  """The dual-stream model. __call__(image, seg, train) -> dict head name -> logits [B, classes] float32."""
  heads: tuple[tuple[str, int], ...]
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  fusion: str = "cls_sum"
  fusion_per_layer: bool = False
  seg_input: str = "palette"
  num_seg_classes: int = 150
  seg_embed_dim: int = 16
  dtype: Any = jnp.float32
  dropout: float = 0.0
  ln_epsilon: float = 1e-6
  gelu_approximate: bool = True
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_layers: bool = False
  head_zeroinit: bool = True
  attention: str = "auto"
  platform: str = "cpu"       # the devices the program is compiled for: build_model's `platform`

  def setup(self):
    if self.fusion not in FUSIONS:
      raise errors.ConfigError(f"config.model.fusion={self.fusion!r}; expected one of {FUSIONS}")
    if self.seg_input not in SEG_INPUTS:
      raise errors.ConfigError(f"config.model.seg_input={self.seg_input!r}; expected one of {SEG_INPUTS}")
    enc = dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
               patch_size=self.patch_size, dtype=self.dtype, dropout=self.dropout, ln_epsilon=self.ln_epsilon,
               gelu_approximate=self.gelu_approximate, remat=self.remat, remat_policy=self.remat_policy,
               scan_layers=self.scan_layers, attention=self.attention, platform=self.platform)
    vit.checkpoint_policy(self.remat_policy)
    self.rgb = vit.ViTEncoder(**enc)
    if self.fusion != "none":
      self.seg = vit.ViTEncoder(**enc)
      if self.seg_input == "classes":
        self.seg_classes = nn.Embed(self.num_seg_classes, self.seg_embed_dim,
                                    embedding_init=nn.initializers.normal(stddev=1.0))
    fusion_kw = dict(dtype=self.dtype, ln_epsilon=self.ln_epsilon, gelu_approximate=self.gelu_approximate,
                     platform=self.platform)
    if self.fusion == "cls_sum":
      if not self.fusion_per_layer:
        self.fusion_shared = CLSFusion(name="fusion", **fusion_kw)
      elif self.scan_layers:
        self.fusion_layers = CLSFusion(**fusion_kw)
      else:
        for i in range(self.depth):
          setattr(self, f"fusion_{i}", CLSFusion(**fusion_kw))
    if self.scan_layers:
      step = vit.scan_over_depth(_DualStep, self.depth, self.remat, self.remat_policy)
      self.layers = step(self.rgb.Transformer.encoderblock,
                         self.seg.Transformer.encoderblock if self.fusion != "none" else None,
                         self.fusion_layers if self.fusion == "cls_sum" and self.fusion_per_layer else None,
                         fusion=self.fusion, fusion_kw=fusion_kw)
    init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.xavier_uniform()
    for name, n in self.heads:
      setattr(self, f"head_{name}", vit_layers.Dense(n, dtype=self.dtype, platform=self.platform, kernel_init=init,
                                              bias_init=nn.initializers.zeros))

  def _fuse(self, i: int, cls_rgb: jax.Array, cls_seg: jax.Array) -> jax.Array:
    fuse = getattr(self, f"fusion_{i}") if self.fusion_per_layer else self.fusion_shared
    return fuse(cls_rgb, cls_seg)

  def _seg_features(self, seg: jax.Array) -> jax.Array:
    if self.seg_input == "palette":
      if seg.ndim != 4:
        raise ValueError(f"seg_input='palette' expects seg float32 [B,S,S,3]; got shape {seg.shape}")
      return seg.astype(jnp.float32)
    if seg.ndim != 3 or not jnp.issubdtype(seg.dtype, jnp.integer):
      raise ValueError(f"seg_input='classes' expects seg int32 [B,S,S] class indices; got {seg.dtype} {seg.shape}")
    return jnp.take(vit_layers.used_whole(self.seg_classes.embedding), seg, axis=0)

  def _layers_scanned(self, x: jax.Array, y: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array | None]:
    shared = None
    if self.fusion == "cls_sum" and not self.fusion_per_layer:
      if self.is_initializing():
        self.fusion_shared(x[:, 0], y[:, 0])  # creates the shared f/g, which the scan reads as plain arrays
      shared = self.fusion_shared.variables["params"]
    carry, rgb_cls = self.layers(x if y is None else (x, y), shared, train)
    for i in range(self.depth):
      self.sow("intermediates", f"rgb_cls_{i}", rgb_cls[i])
    return (carry, None) if y is None else carry

  def _layers(self, x: jax.Array, y: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array | None]:
    """The encoder layers of both streams (y None: RGB alone), with the CLS fusion after each."""
    if self.scan_layers:
      return self._layers_scanned(x, y, train)
    for i in range(self.depth):
      x = self.rgb.block(i, x, train)
      if y is not None:
        y = self.seg.block(i, y, train)
        if self.fusion == "cls_sum":
          cls = self._fuse(i, x[:, 0], y[:, 0])
          x, y = _write_cls(cls, x), _write_cls(cls, y)
      self.sow("intermediates", f"rgb_cls_{i}", x[:, 0])
    return x, y

  def encode(self, image: jax.Array, seg: jax.Array | None, train: bool = False) -> jax.Array:
    """The pre-logits: [B, D] (or [B, 2D] for late_concat), float32."""
    x = self.rgb.embed(image, train)
    if self.fusion == "none":
      x, _ = self._layers(x, None, train)
      rep = self.rgb.norm(x[:, 0])
    else:
      if seg is None:
        raise ValueError(f"fusion={self.fusion!r} needs a segmentation input; got seg=None")
      y = self.seg.embed(self._seg_features(seg), train)
      x, y = self._layers(x, y, train)
      # Only the CLS token feeds the heads, so normalise just that row.
      if self.fusion == "cls_sum":
        rep = 0.5 * (self.rgb.norm(x[:, 0]) + self.seg.norm(y[:, 0]))
      else:
        rep = jnp.concatenate([self.rgb.norm(x[:, 0]), self.seg.norm(y[:, 0])], axis=-1)
    self.sow("intermediates", "pre_logits", rep)
    return rep

  def __call__(self, image: jax.Array, seg: jax.Array | None, train: bool = False) -> dict[str, jax.Array]:
    rep = self.encode(image, seg, train)
    return {name: getattr(self, f"head_{name}")(rep).astype(jnp.float32) for name, _ in self.heads}


def default_platform() -> str:
  """The platform of the devices this process runs on: the target when nothing compiles for other devices."""
  return jax.devices()[0].platform


def model_kwargs(model_config: Mapping[str, Any], platform: str | None = None) -> dict[str, Any]:
  """TransLocator constructor arguments from config.model, completed (runtime/config_schema.py fills every key
  and checks its value; complete_section('model', ...) does so for a model config built alone).

  platform: the devices the model is compiled for (runtime.sharding.platform(mesh)); None = this process's.
  """
  shape = vit.decode_variant(model_config["variant"], **{k: model_config[k] for k in (
      "width", "depth", "mlp_dim", "num_heads", "patch_size")})
  heads = tuple((str(k), int(v)) for k, v in model_config["heads"].items())
  if not heads:
    raise errors.ConfigError("config.model.heads is empty: give at least one head, e.g. {'fine': 12893}")
  return dict(
      heads=heads, width=shape.width, depth=shape.depth, mlp_dim=shape.mlp_dim, num_heads=shape.num_heads,
      patch_size=shape.patch_size,
      platform=vit_layers.check_platform(platform or default_platform()),
      dtype=jnp.dtype(model_config["dtype"]),
      **{k: model_config[k] for k in (
          "fusion", "fusion_per_layer", "seg_input", "num_seg_classes", "seg_embed_dim", "dropout", "ln_epsilon",
          "gelu_approximate", "remat", "remat_policy", "scan_layers", "head_zeroinit", "attention")},
  )


def build_model(model_config: Mapping[str, Any], platform: str | None = None) -> TransLocator:
  """The TransLocator for config.model (a ConfigDict or a plain dict), its choices made for `platform`."""
  return TransLocator(**model_kwargs(model_config, platform))


def build_encoder(model_config: Mapping[str, Any], platform: str | None = None) -> vit.ViTEncoder:
  """A single ViT stream with the sizes and options of config.model (for weight checks and feature use)."""
  kw = model_kwargs(model_config, platform)
  return vit.ViTEncoder(width=kw["width"], depth=kw["depth"], mlp_dim=kw["mlp_dim"], num_heads=kw["num_heads"],
                        patch_size=kw["patch_size"], dtype=kw["dtype"], dropout=kw["dropout"],
                        ln_epsilon=kw["ln_epsilon"], gelu_approximate=kw["gelu_approximate"], remat=kw["remat"],
                        remat_policy=kw["remat_policy"], scan_layers=kw["scan_layers"], attention=kw["attention"],
                        platform=kw["platform"])
