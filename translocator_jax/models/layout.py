"""The two layouts of the per-layer parameters, and pure conversions between them.

Per-layer (config.model.scan_layers=False; the original ViT checkpoints' layout):
  {rgb,seg}/Transformer/encoderblock_{i}/...     one scope per layer
  fusion_{i}/{f,g}/...                           with fusion_per_layer=True
Scanned (scan_layers=True; the layout big_vision's scanned ViT uses for its blocks):
  {rgb,seg}/Transformer/encoderblock/...         the same leaves stacked on a leading [depth] axis
  fusion_layers/{f,g}/...                        with fusion_per_layer=True, stacked the same way
Everything else (embedding, cls, posembed_input, encoder_norm, the shared `fusion`, heads) is the same in both.
The stacked fusion gets its own name so that a tree says by its keys alone which layout it is in (a shared
`fusion` and a stacked one would otherwise differ only in their shapes).

The functions walk nested mappings only (a params tree, a ViTEncoder's params, a flattened-then-nested
checkpoint), so they apply to any tree holding these scopes; they return plain dicts. numpy leaves stay numpy
(loading works on the host), jax arrays stay jax arrays, jax.ShapeDtypeStruct leaves are reshaped abstractly.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Per-layer scope prefix (name_{i}) -> the scope holding all layers stacked.
STACKED = {"encoderblock": "encoderblock", "fusion": "fusion_layers"}
_PER_LAYER = re.compile(r"^(%s)_(\d+)$" % "|".join(STACKED))
_UNSTACKED = {v: k for k, v in STACKED.items()}


def scan_params(params: Mapping[str, Any], depth: int | None = None) -> dict[str, Any]:
  """Per-layer layout -> scanned: every group `name_0 .. name_{depth-1}` becomes `STACKED[name]` with its leaves
  stacked on a new leading axis. `depth` (when given) is checked against every group found.

  Raises ValueError when the tree holds no per-layer scope (already scanned?), or a group's indices are not
  exactly 0..depth-1, or its layers differ in structure or shape.
  """
  found: list[str] = []
  out = _scan(params, depth, "", found)
  if not found:
    raise ValueError("scan_params: no per-layer scope (encoderblock_{i}, fusion_{i}) in the params; "
                     f"is it already in the scanned layout? top-level keys: {sorted(params)}")
  return out


def unscan_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned layout -> per-layer: `encoderblock` / `fusion_layers` become `encoderblock_{i}` / `fusion_{i}`, one
  per index of their leaves' leading axis. The inverse of scan_params, exactly.

  Raises ValueError when the tree holds no scanned scope, or a scanned scope's leaves disagree on the depth.
  """
  found: list[str] = []
  out = _unscan(params, "", found)
  if not found:
    raise ValueError("unscan_params: no scanned scope (encoderblock, fusion_layers) in the params; is it "
                     f"already in the per-layer layout? top-level keys: {sorted(params)}")
  return out


def stacked_axes(path: str) -> int:
  """1 for a leaf under a stacked scope (its leading axis is the layers), else 0: '.../encoderblock/...'."""
  return int(any(part in _UNSTACKED for part in path.split("/")))


def is_scanned(params: Mapping[str, Any]) -> bool:
  """Whether `params` holds a scope of the scanned layout (anywhere in the tree)."""
  return layout_of_paths(_paths(params)) == "scanned"


def layout_of_paths(paths: Iterable[str]) -> str | None:
  """'scanned', 'per-layer' or None (neither kind of layer scope) for parameter path strings, whatever their
  separators ('rgb/Transformer/encoderblock/...' or jax keystr "['rgb']['Transformer']['encoderblock']...")."""
  scanned = re.compile(r"(^|\W)(%s)(\W|$)" % "|".join(_UNSTACKED))
  per_layer = re.compile(r"(^|\W)(%s)_\d+(\W|$)" % "|".join(STACKED))
  kinds = set()
  for path in paths:
    if scanned.search(path):
      kinds.add("scanned")
    elif per_layer.search(path):
      kinds.add("per-layer")
  if len(kinds) > 1:
    raise ValueError("the params mix the scanned and the per-layer layout")
  return kinds.pop() if kinds else None


def _paths(tree: Any, prefix: str = "") -> list[str]:
  if not isinstance(tree, Mapping):
    return [prefix]
  return [p for k, v in tree.items() for p in _paths(v, f"{prefix}/{k}")]


def _scan(node: Any, depth: int | None, where: str, found: list[str]) -> Any:
  if not isinstance(node, Mapping):
    return node
  groups: dict[str, dict[int, Any]] = {}
  out: dict[str, Any] = {}
  for key, value in node.items():
    m = _PER_LAYER.match(str(key))
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = value
    else:
      out[key] = _scan(value, depth, f"{where}/{key}", found)
  for name, layers in groups.items():
    stacked_name = STACKED[name]
    n = len(layers) if depth is None else depth
    if sorted(layers) != list(range(n)):
      raise ValueError(f"scan_params: {where or '/'} has {name}_{{i}} for i in {sorted(layers)}; expected "
                       f"i = 0..{n - 1}" + ("" if depth is None else f" (depth={depth})"))
    if stacked_name in out:
      raise ValueError(f"scan_params: {where or '/'} holds both {name}_{{i}} and {stacked_name!r}")
    trees = [layers[i] for i in range(n)]
    try:
      out[stacked_name] = jax.tree.map(lambda *leaves: _stack(leaves), *trees)
    except ValueError as e:
      raise ValueError(f"scan_params: the layers {where}/{name}_{{i}} differ in structure: {e}") from None
    found.append(f"{where}/{stacked_name}")
  return out


def _unscan(node: Any, where: str, found: list[str]) -> Any:
  if not isinstance(node, Mapping):
    return node
  out: dict[str, Any] = {}
  for key, value in node.items():
    if key not in _UNSTACKED:
      out[key] = _unscan(value, f"{where}/{key}", found)
      continue
    leaves = jax.tree.leaves(value)
    depths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else 0 for leaf in leaves}
    if len(depths) != 1 or 0 in depths:
      raise ValueError(f"unscan_params: the leaves of {where}/{key} disagree on the leading (depth) axis: "
                       f"sizes {sorted(depths)}")
    n = depths.pop()
    for i in range(n):
      name = f"{_UNSTACKED[key]}_{i}"
      if name in node:
        raise ValueError(f"unscan_params: {where or '/'} holds both {key!r} and {name!r}")
      out[name] = jax.tree.map(lambda leaf, i=i: _index(leaf, i), value)
    found.append(f"{where}/{key}")
  return out


def _stack(leaves: tuple[Any, ...]) -> Any:
  if len({np.shape(leaf) for leaf in leaves}) != 1:
    raise ValueError(f"shapes {[np.shape(leaf) for leaf in leaves]}")
  if all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype)
  if all(isinstance(leaf, np.ndarray) for leaf in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _index(leaf: Any, i: int) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype)
  return leaf[i]
