"""ADE20K-150 semantic segmentation of photos that have no map, with a transformers model from a local folder.

Any `AutoModelForSemanticSegmentation` checkpoint with 150 labels works (SegFormer or UperNet trained on ADE20K,
e.g. a saved nvidia/segformer-b4-finetuned-ade-512-512); nothing is downloaded. Inputs are normalised with the
folder's image-processor mean/std when it has a preprocessor_config.json, else ImageNet's; logits are upsampled to
the image size before the argmax. Maps are written as palette-mode PNGs: pixel values are the class indices and
the file's palette is ADE20K's, so they view as the usual colourised maps and read back exactly.
"""
from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
from PIL import Image

from translocator_jax import errors
from translocator_jax.data.records import palette as palette_lib

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter:
  """Callable: uint8 RGB [H, W, 3] -> uint8 ADE20K class indices [H, W] (torch, CPU unless `device`)."""

  def __init__(self, model_dir: os.PathLike | str, *, device: str = "cpu", max_side: int = 512,
               min_side: int = 64):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    model_dir = pathlib.Path(model_dir)
    if not (model_dir / "config.json").is_file():
      raise FileNotFoundError(f"no transformers model in {model_dir} (config.json missing)")
    self._torch = torch
    self.model = transformers.AutoModelForSemanticSegmentation.from_pretrained(model_dir, local_files_only=True)
    self.model.eval().to(device)
    num_labels = self.model.config.num_labels
    if num_labels != palette_lib.NUM_CLASSES:
      raise errors.CheckpointError(f"{model_dir}: model has {num_labels} labels; an ADE20K-150 model is needed")
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    pre = model_dir / "preprocessor_config.json"
    if pre.is_file():
      cfg = json.loads(pre.read_text())
      mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.device = device
    self.max_side = max_side
    self.min_side = min_side

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    torch = self._torch
    h, w = rgb.shape[:2]
    img = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    # Bounded compute, and at least `min_side` for the model's strided convolutions; logits go back to (h, w).
    scale = min(1.0, self.max_side / max(h, w))
    scale = max(scale, self.min_side / min(h, w))
    if scale != 1.0:
      img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    x = (np.asarray(img, np.float32) / 255.0 - self.mean) / self.std
    pixels = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
    with torch.no_grad():
      logits = self.model(pixel_values=pixels).logits
      logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
      classes = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    return classes


def encode_palette_png(classes: np.ndarray) -> bytes:
  """Palette-mode PNG: values are class indices, palette is ADE20K's (reads back exactly, views in colour)."""
  img = Image.fromarray(np.asarray(classes, np.uint8), "P")
  flat = palette_lib.palette().reshape(-1).tolist()
  img.putpalette(flat + [0] * (768 - len(flat)))
  out = io.BytesIO()
  img.save(out, "PNG")
  return out.getvalue()
