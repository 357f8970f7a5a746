"""Per-example image ops of the input pipelines: one geometry for the photo and its segmentation map.

Every op takes the decoded photo (uint8 [H, W, 3]) and its class map (uint8 [H, W]) and resamples both through the
same box (PIL `resize(..., box=...)`): bilinear for the photo, nearest neighbour for the map, so a class stays on
the pixels it labels.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)

Box = tuple[float, float, float, float]  # (left, upper, right, lower) in source pixels


@functools.lru_cache(maxsize=32)
def _tiled(width: int) -> tuple[np.ndarray, np.ndarray]:
  return np.tile(_SCALE, width), np.tile(_SHIFT, width)


def normalize(rgb: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., W, 3] -> float32 ImageNet-normalised.

  Works on rows of W * 3 values: numpy broadcasting over a last axis of 3 is ~10x slower.
  """
  rgb = np.asarray(rgb)
  if rgb.ndim < 2:
    return rgb.astype(np.float32) * _SCALE + _SHIFT
  width = rgb.shape[-2]
  scale, shift = _tiled(width)
  out = rgb.astype(np.float32).reshape(rgb.shape[:-2] + (width * 3,))
  out *= scale
  out += shift
  return out.reshape(rgb.shape)


def denormalize(x: np.ndarray) -> np.ndarray:
  """Inverse of normalize (float32 in [0, 255])."""
  return (np.asarray(x, np.float32) - _SHIFT) / _SCALE


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float] = (0.35, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
  """A box of random area (fraction `scale` of the image) and aspect ratio, as in Inception / torchvision."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = math.sqrt(target * aspect)
    h = math.sqrt(target / aspect)
    if w <= width and h <= height:
      x0 = rng.uniform(0, width - w)
      y0 = rng.uniform(0, height - h)
      return (x0, y0, x0 + w, y0 + h)
  # Fallback: the largest centred box within the ratio range.
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, width / ratio[0]
  elif aspect > ratio[1]:
    w, h = height * ratio[1], height
  else:
    w, h = width, height
  x0, y0 = (width - w) / 2, (height - h) / 2
  return (x0, y0, x0 + w, y0 + h)


def center_box(height: int, width: int, crop_fraction: float = 1.0) -> Box:
  """The centred square of side crop_fraction * shorter side (resize-then-centre-crop in one box)."""
  side = min(height, width) * crop_fraction
  x0, y0 = (width - side) / 2, (height - side) / 2
  return (x0, y0, x0 + side, y0 + side)


def five_crop_boxes(height: int, width: int, crop_fraction: float = 0.875) -> list[Box]:
  """Four corner squares and the centre square, each of side crop_fraction * shorter side."""
  side = min(height, width) * crop_fraction
  x1, y1 = width - side, height - side
  corners = [(0.0, 0.0), (x1, 0.0), (0.0, y1), (x1, y1), (x1 / 2, y1 / 2)]
  return [(x, y, x + side, y + side) for x, y in corners]


def resample(image: np.ndarray, seg: np.ndarray | None, box: Box, size: int,
             flip: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
  """The box of image (bilinear) and seg (nearest) resized to size x size, optionally mirrored left-right."""
  out_image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box))
  out_seg = None
  if seg is not None:
    out_seg = np.asarray(Image.fromarray(seg).resize((size, size), Image.Resampling.NEAREST, box=box))
  if flip:
    out_image = out_image[:, ::-1]
    out_seg = out_seg[:, ::-1] if out_seg is not None else None
  return out_image, out_seg


def seg_to_model_input(seg: np.ndarray, seg_input: str, palette: np.ndarray | None) -> np.ndarray:
  """Class map uint8 [..., H, W] -> what the model reads: 'classes' int32, or 'palette' colours normalised.

  palette: [K, 3] uint8 colours, or float32 colours already normalised (normalize(palette)).
  """
  if seg_input == "classes":
    return seg.astype(np.int32)
  if seg_input == "palette":
    if palette is None:
      raise ValueError("seg_input='palette' needs a palette ([num_classes, 3] uint8)")
    palette = np.asarray(palette)
    if palette.dtype != np.float32:  # uint8 colours; callers on a hot path pass normalize(palette) once
      palette = normalize(palette.astype(np.uint8))
    return np.take(palette, seg, axis=0)
  raise ValueError(f"seg_input must be 'palette' or 'classes', got {seg_input!r}")
