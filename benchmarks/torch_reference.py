"""A faithful eager-PyTorch TransLocator, the speed reference for benchmarks/model_step.py.

Same maths as translocator_jax.models.TransLocator with fusion='cls_sum' (shared f/g), seg_input='palette':
two pre-LN ViT streams (conv patch embedding, CLS, learned position embedding, blocks of
LN -> MHSA -> residual, LN -> MLP(GELU) -> residual), after every block cls = g(f(cls_rgb) + f(cls_seg)) written
into both streams, pre-logits = mean of the two encoder norms of the final CLS, one Linear head per task.
Written the way a PyTorch user would (timm-style fused qkv Linear, F.scaled_dot_product_attention), so it is the
fast eager baseline, not a straw man.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):

  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
    x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):

  def __init__(self, dim: int, mlp_dim: int, num_heads: int, eps: float, gelu_approximate: str):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.fc1 = nn.Linear(dim, mlp_dim)
    self.act = nn.GELU(approximate=gelu_approximate)
    self.fc2 = nn.Linear(mlp_dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Stream(nn.Module):
  """One ViT encoder, callable piece by piece."""

  def __init__(self, width, depth, mlp_dim, num_heads, patch_size, image_size, eps, gelu_approximate):
    super().__init__()
    self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    n = (image_size // patch_size) ** 2
    self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
    self.blocks = nn.ModuleList(Block(width, mlp_dim, num_heads, eps, gelu_approximate) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=eps)

  def embed(self, image: torch.Tensor) -> torch.Tensor:
    x = self.patch_embed(image).flatten(2).transpose(1, 2)
    return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed


class Projection(nn.Sequential):

  def __init__(self, dim, eps, gelu_approximate):
    super().__init__(nn.LayerNorm(dim, eps=eps), nn.GELU(approximate=gelu_approximate), nn.Linear(dim, dim))


class TorchTransLocator(nn.Module):

  def __init__(self, heads: dict[str, int], width, depth, mlp_dim, num_heads, patch_size, image_size,
               eps=1e-6, gelu_approximate="tanh"):
    super().__init__()
    kw = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=patch_size,
              image_size=image_size, eps=eps, gelu_approximate=gelu_approximate)
    self.rgb = Stream(**kw)
    self.seg = Stream(**kw)
    self.f = Projection(width, eps, gelu_approximate)
    self.g = Projection(width, eps, gelu_approximate)
    self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in heads.items()})

  def forward(self, image: torch.Tensor, seg: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = self.rgb.embed(image), self.seg.embed(seg)
    for brgb, bseg in zip(self.rgb.blocks, self.seg.blocks):
      x, y = brgb(x), bseg(y)
      cls = self.g(self.f(x[:, :1]) + self.f(y[:, :1]))
      x = torch.cat([cls, x[:, 1:]], dim=1)
      y = torch.cat([cls, y[:, 1:]], dim=1)
    rep = 0.5 * (self.rgb.norm(x[:, 0]) + self.seg.norm(y[:, 0]))
    return {k: h(rep) for k, h in self.heads.items()}


def make_train_step(model: TorchTransLocator, lr: float = 0.01, momentum: float = 0.9):
  """One SGD-momentum step on the summed cross-entropy of all heads."""
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

  def step(image, seg, labels: dict[str, torch.Tensor]) -> float:
    opt.zero_grad(set_to_none=True)
    logits = model(image, seg)
    loss = sum(F.cross_entropy(logits[k], labels[k]) for k in logits)
    loss.backward()
    opt.step()
    return loss.detach()

  return step
