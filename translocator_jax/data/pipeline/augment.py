"""Per-example image ops of the input pipelines: one geometry for the photo and its segmentation map.

Every op takes the decoded photo (uint8 [H, W, 3]) and its class map (uint8 [H, W]) and resamples both through the
same box (PIL `resize(..., box=...)`): bilinear for the photo, nearest neighbour for the map, so a class stays on
the pixels it labels. `resample` is the reference; `crop_resize` (training) gives its pixels faster (OpenCV's warp
where Pillow's filter is plain bilinear interpolation), and the *_batch / palette_* ops build whole float32 batches
with the values of `normalize` / `seg_to_model_input`.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from translocator_jax import errors
from translocator_jax.data.records import codecs

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

  Works on rows of W * 3 values: numpy broadcasting over a last axis of 3 is much slower
  (benchmarks/README.md).
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


def random_resized_crop_boxes(rng: np.random.Generator, heights: np.ndarray, widths: np.ndarray,
                              scale: tuple[float, float] = (0.35, 1.0),
                              ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
  """random_resized_crop_box for a batch of images at once: float64 [B, 4] boxes, the same distribution.

  Each image gets `attempts` (area, aspect) draws; the first that fits is taken, else the same centred fallback.
  """
  heights = np.asarray(heights, np.float64)
  widths = np.asarray(widths, np.float64)
  b = len(heights)
  draws = rng.random((b, attempts, 2))
  target = (heights * widths)[:, None] * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = np.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
  w, h = np.sqrt(target * aspect), np.sqrt(target / aspect)
  fits = (w <= widths[:, None]) & (h <= heights[:, None])
  first = fits.argmax(axis=1)
  found = fits[np.arange(b), first]
  w, h = w[np.arange(b), first], h[np.arange(b), first]
  # Fallback: the largest centred box within the ratio range.
  image_aspect = widths / heights
  fw = np.where(image_aspect < ratio[0], widths, np.where(image_aspect > ratio[1], heights * ratio[1], widths))
  fh = np.where(image_aspect < ratio[0], widths / ratio[0], heights)
  w, h = np.where(found, w, fw), np.where(found, h, fh)
  position = rng.random((b, 2))
  x0 = np.where(found, position[:, 0] * (widths - w), (widths - w) / 2)
  y0 = np.where(found, position[:, 1] * (heights - h), (heights - h) / 2)
  return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


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


TTA_MODES = ("center", "five_crop", "ten_crop")
# Training augmentation (config.data.augmentation): ours (paired random resized crops and flips), or the authors'.
AUGMENTATIONS = ("crop", "authors_ten_crop")


def ten_crops(image: np.ndarray, seg: np.ndarray, size: int, crop_fraction: float = 0.875
              ) -> tuple[np.ndarray, np.ndarray]:
  """torchvision's TenCrop: the five crops, then the same five mirrored left-right; [10, S, S, 3], [10, S, S]."""
  h, w = image.shape[:2]
  crops = [resample(image, seg, b, size) for b in five_crop_boxes(h, w, crop_fraction)]
  crops += [(i[:, ::-1], s[:, ::-1]) for i, s in crops]
  return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])


def eval_crops(image: np.ndarray, seg: np.ndarray, size: int, tta: str = "center",
               crop_fraction: float = 0.875) -> tuple[np.ndarray, np.ndarray]:
  """The evaluation view of a photo and its class map, as evaluation and Predictor both take it: uint8
  ([S, S, 3], [S, S]) for tta='center', or with a crop axis first ([5, S, S, 3], [5, S, S]) for 'five_crop',
  ([10, ...]) for 'ten_crop' (the five and their mirrors, as the authors evaluate)."""
  h, w = image.shape[:2]
  if tta == "five_crop":
    crops = [resample(image, seg, b, size) for b in five_crop_boxes(h, w, crop_fraction)]
    return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])
  if tta == "ten_crop":
    return ten_crops(image, seg, size, crop_fraction)
  if tta != "center":
    raise errors.ConfigError(f"config.eval.tta={tta!r}; expected one of {TTA_MODES}")
  return resample(image, seg, center_box(h, w, crop_fraction), size)


def authors_ten_crops(image: np.ndarray, seg: np.ndarray, size: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The authors' training view: the photo rotated by U(0, 15) degrees about its centre (black corners, nearest,
  as torchvision's RandomAffine), mirrored with p = 0.5, resized to R x R (R = size * 256 / 224) and cut in ten
  crops of `size`; the map resized (nearest) and cut alike, with neither rotation nor mirror (their code leaves
  the map out of the random transforms, so the streams see different pixels then)."""
  side = int(round(size * 256 / 224))
  img = Image.fromarray(image).rotate(float(rng.uniform(0.0, 15.0)), resample=Image.Resampling.NEAREST)
  if rng.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  square = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))
  seg_square = np.asarray(Image.fromarray(seg).resize((side, side), Image.Resampling.NEAREST))
  return ten_crops(square, seg_square, size, size / side)


def warps(box: Box, size: int, antialias: bool = True) -> bool:
  """Whether crop_resize takes OpenCV's warp for this box (else Pillow's resize)."""
  return codecs.cv2 is not None and (not antialias or max(box[2] - box[0], box[3] - box[1]) <= size)


def crop_resize(image: np.ndarray | Image.Image, seg: np.ndarray | Image.Image, box: Box, size: int,
                flip: bool = False, antialias: bool = True,
                out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`resample` for training, faster: contiguous uint8 image [S, S, 3] and map [S, S] (written into `out`).

  seg may be a map cut short below the box (only rows < ceil(box bottom) are read).

  The map goes through Pillow's nearest-neighbour resize, as in `resample` (the same pixels). The photo goes
  through OpenCV's bilinear warp when the box is upscaled on both axes: there Pillow's bilinear filter is plain
  2-tap interpolation and the two agree within a few levels (OpenCV rounds sample positions to 1/32 px). A box
  downscaled on either axis goes through Pillow (its filter widens with the scale: antialiasing), unless
  antialias=False, which warps those too (faster; aliased, so not `resample`'s pixels there).
  """
  x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / size, (y1 - y0) / size
  mirror = Image.Transpose.FLIP_LEFT_RIGHT
  image_out, seg_out = out if out is not None else (np.empty((size, size, 3), np.uint8),
                                                    np.empty((size, size), np.uint8))
  if warps(box, size, antialias):
    cv2 = codecs.cv2
    if isinstance(image, Image.Image):
      image = np.asarray(image)
    # Output pixel u samples x0 + (u + 0.5) * sx in pixel-edge coordinates: x0 + (u + 0.5) * sx - 0.5 in
    # OpenCV's pixel-centre ones; flipped, u samples where S - 1 - u did. Edge taps repeat the edge pixel, as
    # Pillow's renormalised weights do.
    row = [-sx, 0.0, x0 + (size - 0.5) * sx - 0.5] if flip else [sx, 0.0, x0 + 0.5 * sx - 0.5]
    matrix = np.array([row, [0.0, sy, y0 + 0.5 * sy - 0.5]])
    cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), dst=image_out,
                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
  else:
    if not isinstance(image, Image.Image):
      image = Image.fromarray(image)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    image_out[...] = np.asarray(resized.transpose(mirror) if flip else resized)
  if not isinstance(seg, Image.Image):
    seg = Image.fromarray(np.ascontiguousarray(seg))
  resized = seg.resize((size, size), Image.Resampling.NEAREST, box=box)
  seg_out[...] = np.asarray(resized.transpose(mirror) if flip else resized)
  return image_out, seg_out


@functools.lru_cache(maxsize=1)
def normalize_affine() -> tuple[np.ndarray, np.ndarray]:
  """(scale, shift), float32 [3] each: normalize(rgb) == rgb.astype(float32) * scale + shift per channel."""
  return np.asarray(_SCALE, np.float32).copy(), np.asarray(_SHIFT, np.float32).copy()


def image_lut() -> np.ndarray:
  """[256, 1, 3] float32: normalize() of every uint8 value per channel (the same float32 operations)."""
  return normalize(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))[:, None, :]


def palette_table(palette: np.ndarray) -> np.ndarray:
  """[256, 1, 3] float32 lookup table of normalised palette colours (classes past the palette map to 0)."""
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) > 256:
    raise ValueError(f"palette must be [num_classes <= 256, 3], got shape {palette.shape}")
  table = np.zeros((256, 1, 3), np.float32)
  table[:len(palette), 0] = palette if palette.dtype == np.float32 else normalize(palette.astype(np.uint8))
  return table


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
  raise errors.ConfigError(f"config.model.seg_input={seg_input!r}; expected 'palette' or 'classes'")
