"""A light geo-aware projection of gallery embeddings (trained on the gallery itself, after the model).

The pre-logits are trained to name a cell, not to tell two places inside a cell apart. This small MLP
(standardise -> Dense 256 -> GELU -> Dense 64 -> L2 norm) is trained contrastively so that photos taken within
POSITIVE_KM of each other embed close: each anchor's positive is its neighbour along the S2 (Hilbert) curve when
that neighbour lies within POSITIVE_KM, other photos of the batch are negatives unless they also lie within
POSITIVE_KM of the anchor. The Hilbert curve finds close pairs in O(N log N), so the same code runs on MP-16.
Saved as plain arrays (projection.npz) beside the gallery.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from translocator_jax import errors
from translocator_jax.geo import cells, distance

POSITIVE_KM = 5.0
HIDDEN = 256
OUT = 64
FILE = "projection.npz"
STEPS = 3000


class TooFewPairsError(errors.DataError):
  """The gallery has no photos close enough to each other to learn from (the gallery's dataset is too small or
  too spread out: the person's data, not our bug)."""


@dataclasses.dataclass
class Projection:
  mean: np.ndarray     # float32 [D]
  scale: np.ndarray    # float32 [D] 1 / std
  w1: np.ndarray
  b1: np.ndarray
  w2: np.ndarray
  b2: np.ndarray

  def params(self) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}

  def __call__(self, x) -> jax.Array:
    return _apply(self.params(), jnp.asarray(x, jnp.float32))

  def save(self, path) -> None:
    np.savez(path, **dataclasses.asdict(self))

  @classmethod
  def load(cls, path) -> "Projection":
    with np.load(path, allow_pickle=False) as f:
      return cls(**{k.name: f[k.name] for k in dataclasses.fields(cls)})


@jax.jit
def _apply(p, x):
  x = (x - p["mean"]) * p["scale"]
  z = jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def positive_pairs(latlon: np.ndarray, positive_km: float = POSITIVE_KM) -> tuple[np.ndarray, np.ndarray]:
  """(anchor rows, positive rows): neighbours along the S2 curve that lie within positive_km, both ways."""
  order = np.argsort(cells.leaf_cell_ids(latlon), kind="stable")
  a, b = order[:-1], order[1:]
  close = distance.haversine_km_numpy(latlon[a], latlon[b]) < positive_km
  a, b = a[close], b[close]
  return np.concatenate([a, b]), np.concatenate([b, a])


def _loss(p, xa, xp, la, lp, positive_km):
  za, zp = _apply(p, xa), _apply(p, xp)
  logits = za @ zp.T / 0.05
  near = distance.haversine_km(la[:, None, :], lp[None, :, :]) < positive_km
  logits = jnp.where(near & ~jnp.eye(len(xa), dtype=bool), -1e9, logits)  # close photos are not negatives
  return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(len(xa))).mean()


def train(embeddings: np.ndarray, latlon: np.ndarray, *, steps: int = STEPS, batch: int = 512, seed: int = 0,
          learning_rate: float = 1e-3, positive_km: float = POSITIVE_KM, progress: bool = True) -> Projection:
  """Trains the projection on a gallery's embeddings [N, D] and locations [N, 2]."""
  x = np.asarray(embeddings, np.float32)
  latlon = np.asarray(latlon, np.float32)
  anchors, positives = positive_pairs(latlon, positive_km)
  if len(anchors) < 2:
    raise TooFewPairsError(f"the gallery has {len(anchors)} pairs of photos within {positive_km} km: nothing to train on")
  batch = int(min(batch, len(anchors)))
  mean, std = x.mean(0), x.std(0) + 1e-6
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  d = x.shape[1]
  p = {"mean": jnp.asarray(mean), "scale": jnp.asarray(1.0 / std),
       "w1": jax.random.normal(k1, (d, HIDDEN)) / np.sqrt(d), "b1": jnp.zeros(HIDDEN),
       "w2": jax.random.normal(k2, (HIDDEN, OUT)) / np.sqrt(HIDDEN), "b2": jnp.zeros(OUT)}
  trainable = ("w1", "b1", "w2", "b2")
  opt = optax.adamw(learning_rate, weight_decay=1e-4)
  state = opt.init({k: p[k] for k in trainable})

  @jax.jit
  def step(p, state, xa, xp, la, lp):
    def loss(t):
      return _loss({**p, **t}, xa, xp, la, lp, positive_km)
    value, grads = jax.value_and_grad(loss)({k: p[k] for k in trainable})
    updates, state = opt.update(grads, state, {k: p[k] for k in trainable})
    return {**p, **optax.apply_updates({k: p[k] for k in trainable}, updates)}, state, value

  rng = np.random.default_rng(seed)
  for _ in tqdm.trange(steps, desc="geo projection", leave=False, disable=not progress):
    pick = rng.choice(len(anchors), batch, replace=False)
    a, b = anchors[pick], positives[pick]
    p, state, _ = step(p, state, x[a], x[b], latlon[a], latlon[b])
  return Projection(**{k: np.asarray(v, np.float32) for k, v in p.items()})


def path_in(gallery_root) -> pathlib.Path:
  return pathlib.Path(gallery_root) / FILE
