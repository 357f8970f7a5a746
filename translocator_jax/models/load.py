"""All pretrained-weight surgery in one place: ViT checkpoints -> TransLocator params.

  params, report = load_pretrained(params, path, config.model)
  print(report.summary())

Sources (nothing is downloaded; `path` is local):
  * original ViT .npz (ImageNet-21k ViT-B_16.npz, the augreg files): read with np.load(allow_pickle=False).
  * HuggingFace transformers ViT weights: a directory holding model.safetensors or pytorch_model.bin, or the file
    itself. safetensors is read as numpy; .bin/.pt with torch.load(weights_only=True) (no untrusted unpickling).
    Both the transformers-5 names (layers.N.attention.q_proj) and the published legacy names
    (encoder.layer.N.attention.attention.query), with or without a `vit.` prefix, are understood.
Both streams (rgb, seg) get the same encoder weights. The position embedding is resampled (bilinear, as
big_vision) when the patch grid differs. Heads, fusion and the class-embedding table stay as initialised.
Everything is reported: loaded, resampled, left (ours, not loaded) and unused (checkpoint keys not used).
`params` may be in either layout (models/layout.py): scanned params are unscanned, filled and scanned again, so
the report names per-layer paths in both cases. A .npz saved from a scanned ViT (Transformer/encoderblock stacked,
as big_vision writes with scan=True) is read too.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from translocator_jax import errors
from translocator_jax.models import layout

STREAMS = ("rgb", "seg")
POSEMB = "Transformer/posembed_input/pos_embedding"
HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass
class LoadReport:
  source: str
  format: str                                           # 'npz' | 'hf-safetensors' | 'hf-torch'
  loaded: list[str] = dataclasses.field(default_factory=list)      # our param paths
  resampled: list[str] = dataclasses.field(default_factory=list)   # "path: old shape -> new shape"
  left: list[str] = dataclasses.field(default_factory=list)        # our param paths kept as initialised
  unused: list[str] = dataclasses.field(default_factory=list)      # checkpoint keys (ViT layout) not used
  notes: list[str] = dataclasses.field(default_factory=list)       # warnings, e.g. LayerNorm epsilon mismatch

  def summary(self) -> str:
    tops = lambda keys: sorted({k.split("/")[0] for k in keys})
    lines = [f"pretrained weights from {self.source} ({self.format}):",
             f"  loaded    {len(self.loaded)} arrays",
             f"  resampled {len(self.resampled)}: " + "; ".join(self.resampled),
             f"  left      {len(self.left)} arrays as initialised, under {tops(self.left)}",
             f"  unused    {len(self.unused)} checkpoint arrays: {tops(self.unused)}"]
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


def load_pretrained(params: Mapping[str, Any], path: str | pathlib.Path,
                    model_config: Mapping[str, Any]) -> tuple[dict[str, Any], LoadReport]:
  """Fills both encoder streams of `params` (a TransLocator params tree) from a ViT checkpoint at `path`.

  Returns new params (numpy float32 leaves where loaded; others unchanged) and a LoadReport.
  Raises errors.CheckpointError for a file that is not a ViT checkpoint, a missing key or a shape mismatch.
  """
  path = pathlib.Path(path)
  scanned = layout.is_scanned(params)
  if scanned:
    params = layout.unscan_params(params)
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  streams = [s for s in STREAMS if any(k.startswith(s + "/") for k in flat)]
  if not streams:
    raise ValueError(f"params have no encoder stream ({STREAMS}); top-level keys: {sorted(params)}")
  num_heads = _num_heads(flat, streams[0])
  source, fmt, source_cfg = read_checkpoint(path, num_heads=num_heads)
  report = LoadReport(source=str(path), format=fmt)
  _check_options(model_config, fmt, source_cfg, report)

  seg_classes = model_config["seg_input"] == "classes"
  used = set()
  out = {}
  for key, value in flat.items():
    stream, _, rest = key.partition("/")
    if stream not in streams:
      out[key] = value
      report.left.append(key)
      continue
    if rest not in source:
      raise errors.CheckpointError(f"{path}: checkpoint has no key {rest!r} (needed for our {key!r}, shape "
                                   f"{tuple(np.shape(value))}); is it a ViT of the same depth?")
    src = source[rest]
    want = tuple(np.shape(value))
    if src.shape == want:
      out[key] = np.asarray(src, np.float32)
      report.loaded.append(key)
    elif rest == POSEMB and src.shape[-1] == want[-1]:
      out[key] = resample_posemb(src, want[1])
      report.resampled.append(f"{key}: {src.shape} -> {want}")
    elif stream == "seg" and seg_classes and rest == "embedding/kernel":
      # The class-index stream embeds E learned channels, not RGB: its patch kernel cannot come from RGB.
      out[key] = value
      report.left.append(key)
      report.notes.append(f"{key} left as initialised: seg_input='classes' feeds {want[2]} channels, the "
                          f"checkpoint's kernel has {src.shape[2]}")
      continue
    else:
      raise errors.CheckpointError(f"{path}: shape mismatch for {rest!r}: checkpoint {src.shape}, model {want} "
                                   f"(our {key!r}); check config.model.variant / width / patch size")
    used.add(rest)
  report.unused = sorted(k for k in source if k not in used)
  loaded = traverse_util.unflatten_dict(out, sep="/")
  return (layout.scan_params(loaded) if scanned else loaded), report


def read_checkpoint(path: str | pathlib.Path, num_heads: int | None = None
                    ) -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
  """Reads a ViT checkpoint into the original ViT .npz layout: ({key: array}, format, source config).

  `num_heads` is needed for HF files (their q/k/v/out matrices are [D, D]; ours are [D, H, D/H]); when the
  directory has a config.json its num_attention_heads is used and must agree.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  hf_cfg: dict[str, Any] = {}
  if path.is_dir():
    found = [path / f for f in HF_FILES if (path / f).is_file()]
    if not found:
      raise errors.CheckpointError(f"{path}: a directory, but it has none of {HF_FILES} (sharded HF checkpoints "
                                   "are not supported; merge them into one model.safetensors)")
    if (path / "config.json").is_file():
      hf_cfg = _read_json(path / "config.json")
    path = found[0]
  elif (path.parent / "config.json").is_file() and path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
    hf_cfg = _read_json(path.parent / "config.json")

  suffix = path.suffix.lower()
  if suffix == ".npz":
    return _read_npz(path), "npz", {}
  if suffix == ".safetensors":
    raw, fmt = _read_safetensors(path), "hf-safetensors"
  elif suffix in (".bin", ".pt", ".pth"):
    raw, fmt = _read_torch(path), "hf-torch"
  else:
    raise errors.CheckpointError(f"{path}: unknown checkpoint type {suffix!r}; expected a ViT .npz, a .safetensors, "
                                 "a pytorch .bin/.pt, or a directory holding model.safetensors / pytorch_model.bin")
  cfg_heads = hf_cfg.get("num_attention_heads")
  if num_heads is None:
    num_heads = cfg_heads
  elif cfg_heads is not None and int(cfg_heads) != num_heads:
    raise errors.CheckpointError(f"{path}: config.json says num_attention_heads={cfg_heads}, the model has "
                                 f"{num_heads}; check config.model.variant")
  if num_heads is None:
    raise ValueError(f"{path}: num_heads is needed to convert HF attention weights")
  return hf_to_vit(raw, int(num_heads), str(path)), fmt, hf_cfg


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """[1, 1+g*g, D] -> [1, num_tokens, D]: CLS kept, the g x g grid zoomed bilinearly (big_vision's method)."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  posemb = np.asarray(posemb, np.float32)
  old, new = posemb.shape[1] - 1, num_tokens - 1
  gs_old, gs_new = int(round(np.sqrt(old))), int(round(np.sqrt(new)))
  if gs_old * gs_old != old or gs_new * gs_new != new:
    raise errors.CheckpointError(f"cannot resample position embedding {posemb.shape} to {num_tokens} tokens: "
                                 "expected one CLS token plus a square grid on both sides")
  grid = posemb[0, 1:].reshape(gs_old, gs_old, -1)
  grid = scipy.ndimage.zoom(grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)
  return np.concatenate([posemb[:, :1], grid.reshape(1, new, -1)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- readers

def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: np.asarray(z[k]) for k in z.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError (pickled data), OSError, EOFError
    raise errors.CheckpointError(f"{path}: not a readable .npz checkpoint ({type(e).__name__}: {e})") from e
  # big_vision-style files may nest the encoder under a prefix (e.g. 'params/img/'): strip it.
  prefixes = [k[: -len("embedding/kernel")] for k in data if k.endswith("embedding/kernel")]
  prefix = min(prefixes, key=len) if prefixes else None
  if prefix is None or prefix + "cls" not in data:
    raise errors.CheckpointError(f"{path}: not a ViT checkpoint (no 'embedding/kernel' and 'cls' arrays among "
                                 f"{len(data)} keys, e.g. {sorted(data)[:5]})")
  data = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
  if layout.is_scanned(traverse_util.unflatten_dict(data, sep="/")):
    try:
      data = traverse_util.flatten_dict(layout.unscan_params(traverse_util.unflatten_dict(data, sep="/")), sep="/")
    except ValueError as e:  # the file's scanned layers disagree: the file, not our code
      raise errors.CheckpointError(f"{path}: {e}") from None
  return data


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading .safetensors needs `safetensors` (pip install -e .[torch])") from e
  try:
    return dict(load_file(str(path)))
  except Exception as e:  # safetensors raises its own SafetensorError on a bad header
    # bfloat16 files cannot become numpy directly: go through torch when it is there.
    if "bfloat16" in str(e).lower() or "bf16" in str(e).lower():
      from safetensors.torch import load_file as load_torch  # pylint: disable=g-import-not-at-top
      return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}
    raise errors.CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading pytorch .bin checkpoints needs torch (pip install -e .[torch])") from e
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError (untrusted objects refused), RuntimeError (not a torch file)
    raise errors.CheckpointError(f"{path}: not a loadable pytorch state dict with weights_only=True "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not all(hasattr(v, "detach") for v in obj.values()):
    raise errors.CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
  return {k: v.detach().float().numpy() for k, v in obj.items()}


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f"{path}: unreadable config.json ({e})") from e


# ---------------------------------------------------------------------------------------------- HF conversion

# Legacy (published google/vit-* files) -> transformers-5 names.
_LEGACY = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
]
_BLOCK = {
    "attention.q_proj": "MultiHeadDotProductAttention_1/query",
    "attention.k_proj": "MultiHeadDotProductAttention_1/key",
    "attention.v_proj": "MultiHeadDotProductAttention_1/value",
    "attention.o_proj": "MultiHeadDotProductAttention_1/out",
    "layernorm_before": "LayerNorm_0",
    "layernorm_after": "LayerNorm_2",
    "mlp.fc1": "MlpBlock_3/Dense_0",
    "mlp.fc2": "MlpBlock_3/Dense_1",
}


def hf_to_vit(state: Mapping[str, np.ndarray], num_heads: int, source: str = "<state dict>"
              ) -> dict[str, np.ndarray]:
  """A transformers ViT state dict (numpy) -> original ViT .npz layout. Unknown keys keep an `hf:` prefix."""
  out: dict[str, np.ndarray] = {}
  for name, w in state.items():
    key = re.sub(r"^vit\.", "", name)
    for pattern, repl in _LEGACY:
      key = re.sub(pattern, repl, key)
    w = np.asarray(w, np.float32)
    if key == "embeddings.cls_token":
      out["cls"] = w
    elif key == "embeddings.position_embeddings":
      out[POSEMB] = w
    elif key == "embeddings.patch_embeddings.projection.weight":
      out["embedding/kernel"] = w.transpose(2, 3, 1, 0)  # [D,C,p,p] -> [p,p,C,D]
    elif key == "embeddings.patch_embeddings.projection.bias":
      out["embedding/bias"] = w
    elif key in ("layernorm.weight", "layernorm.bias"):
      out["Transformer/encoder_norm/" + ("scale" if key.endswith("weight") else "bias")] = w
    elif (m := re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", key)) and m.group(2) in _BLOCK:
      i, module, kind = int(m.group(1)), m.group(2), m.group(3)
      target = f"Transformer/encoderblock_{i}/{_BLOCK[module]}"
      leaf = ("scale" if kind == "weight" else "bias") if module.startswith("layernorm") else (
          "kernel" if kind == "weight" else "bias")
      out[f"{target}/{leaf}"] = _convert_value(module, kind, w, num_heads, source, name)
    else:
      out["hf:" + name] = w  # pooler, classifier, mask token: reported as unused
  if "cls" not in out or "embedding/kernel" not in out:
    raise errors.CheckpointError(f"{source}: not a HF ViT checkpoint (no embeddings.cls_token / patch projection "
                                 f"among {len(state)} keys, e.g. {sorted(state)[:5]})")
  return out


def _convert_value(module: str, kind: str, w: np.ndarray, num_heads: int, source: str, name: str) -> np.ndarray:
  if module.startswith("layernorm") or (kind == "bias" and module in ("attention.o_proj", "mlp.fc1", "mlp.fc2")):
    return w
  if kind == "weight":
    w = w.T  # torch Linear [out, in] -> flax [in, out]
  if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
    d = w.shape[-1]
    if d % num_heads:
      raise errors.CheckpointError(f"{source}: {name} has {d} features, not divisible by {num_heads} heads")
    return w.reshape(w.shape[:-1] + (num_heads, d // num_heads))  # kernel [D,H,Dh], bias [H,Dh]
  if module == "attention.o_proj":
    return w.reshape(num_heads, w.shape[0] // num_heads, w.shape[1])  # [H, Dh, D]
  return w


# ---------------------------------------------------------------------------------------------------- helpers

def _num_heads(flat: Mapping[str, Any], stream: str) -> int:
  key = f"{stream}/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
  if key not in flat:
    raise ValueError(f"params lack {key!r}: not TransLocator params")
  return int(np.shape(flat[key])[1])


def _check_options(model_config, fmt: str, source_cfg: Mapping[str, Any], report: LoadReport) -> None:
  """Notes where the model's LayerNorm epsilon / GELU differ from what the weights were trained with."""
  if fmt == "npz":
    eps, approx = 1e-6, True  # original ViT: flax LayerNorm default, nn.gelu (tanh form)
  else:
    eps = float(source_cfg.get("layer_norm_eps", 1e-12))
    act = str(source_cfg.get("hidden_act", "gelu"))
    approx = act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
  ours_eps, ours_approx = model_config["ln_epsilon"], model_config["gelu_approximate"]
  if not np.isclose(ours_eps, eps, rtol=0, atol=eps * 1e-3):
    report.notes.append(f"config.model.ln_epsilon={ours_eps:g} but the weights were trained with {eps:g}")
  if ours_approx != approx:
    report.notes.append(f"config.model.gelu_approximate={ours_approx} but the weights used "
                        f"{'tanh' if approx else 'exact erf'} GELU")
