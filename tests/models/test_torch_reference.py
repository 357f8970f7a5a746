"""The PyTorch speed reference (benchmarks/torch_reference.py) computes the same function as our model."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import torch

from translocator_jax import models
from translocator_jax import paths


def _reference_module():
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                paths.REPO_ROOT / "benchmarks" / "torch_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _copy_params(tmodel, params, width):
  t = lambda x, *perm: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(*perm)) if perm
                                        else np.asarray(x).copy())

  def ln(mod, p):
    mod.weight.copy_(t(p["scale"]))
    mod.bias.copy_(t(p["bias"]))

  def dense(mod, p):
    mod.weight.copy_(t(p["kernel"], 1, 0))
    mod.bias.copy_(t(p["bias"]))

  for name in ("rgb", "seg"):
    stream, p = getattr(tmodel, name), params[name]
    stream.patch_embed.weight.copy_(t(p["embedding"]["kernel"], 3, 2, 0, 1))
    stream.patch_embed.bias.copy_(t(p["embedding"]["bias"]))
    stream.cls.copy_(t(p["cls"]))
    stream.pos_embed.copy_(t(p["Transformer"]["posembed_input"]["pos_embedding"]))
    ln(stream.norm, p["Transformer"]["encoder_norm"])
    for i, block in enumerate(stream.blocks):
      b = p["Transformer"][f"encoderblock_{i}"]
      att = b["MultiHeadDotProductAttention_1"]
      ln(block.norm1, b["LayerNorm_0"])
      ln(block.norm2, b["LayerNorm_2"])
      qkv_kernel = np.concatenate([np.asarray(att[m]["kernel"]).reshape(width, width) for m in ("query", "key", "value")], 1)
      block.attn.qkv.weight.copy_(t(qkv_kernel, 1, 0))
      block.attn.qkv.bias.copy_(t(np.concatenate([np.asarray(att[m]["bias"]).ravel() for m in ("query", "key", "value")])))
      block.attn.proj.weight.copy_(t(np.asarray(att["out"]["kernel"]).reshape(width, width), 1, 0))
      block.attn.proj.bias.copy_(t(att["out"]["bias"]))
      dense(block.fc1, b["MlpBlock_3"]["Dense_0"])
      dense(block.fc2, b["MlpBlock_3"]["Dense_1"])
  for name in ("f", "g"):
    seq, p = getattr(tmodel, name), params["fusion"][name]
    ln(seq[0], p["LayerNorm_0"])
    dense(seq[2], p["Dense_0"])
  for name, head in tmodel.heads.items():
    dense(head, params[f"head_{name}"])


def test_torch_reference_matches_model(tiny):
  cfg = tiny("head_zeroinit=False").model
  kw = models.model_kwargs(cfg)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  seg = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  model = models.build_model(cfg)
  params = model.init(jax.random.key(0), jnp.asarray(image), jnp.asarray(seg))["params"]
  # Perturb LayerNorms and biases so every parameter matters.
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x) + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)
  want = model.apply({"params": params}, jnp.asarray(image), jnp.asarray(seg))

  ref = _reference_module()
  tmodel = ref.TorchTransLocator(dict(cfg.heads), kw["width"], kw["depth"], kw["mlp_dim"], kw["num_heads"],
                                 kw["patch_size"], cfg.image_size).eval()
  with torch.no_grad():
    _copy_params(tmodel, params, kw["width"])
    got = tmodel(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()),
                 torch.from_numpy(seg.transpose(0, 3, 1, 2).copy()))
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name].numpy(), np.asarray(want[name]), atol=1e-4, rtol=1e-4)
  # And one SGD step runs and lowers the loss on a fixed batch.
  step = ref.make_train_step(tmodel.train(), lr=0.05)
  labels = {k: torch.zeros(2, dtype=torch.int64) for k in cfg.heads}
  timg, tseg = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()), torch.from_numpy(seg.transpose(0, 3, 1, 2).copy())
  first = float(step(timg, tseg, labels))
  for _ in range(3):
    last = float(step(timg, tseg, labels))
  assert last < first
