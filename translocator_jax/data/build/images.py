"""Decoding photos and segmentation maps into the record schema, with every bad case named.

Each function either returns clean data or raises `BadInput(reason)`: builders catch it, skip the file and list
the reason in report.json. Conversions that are right to do are done here: greyscale / CMYK / palette / 16-bit /
alpha -> 8-bit RGB (alpha composited on white), EXIF orientation applied.
"""
from __future__ import annotations

import dataclasses
import io
import math
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from translocator_jax import errors
from translocator_jax.data.records import palette as palette_lib
from translocator_jax.data.records import schema

# PIL's own bomb guard only warns below 2x its limit; we check the header size ourselves before decoding.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_JPEG_QUALITY = 90
_RESAMPLE = Image.Resampling.BICUBIC


class BadInput(errors.DataError):
  """A file or row that cannot go into a dataset; the message is the reason written to report.json."""


@dataclasses.dataclass
class DecodedImage:
  image: Image.Image  # RGB, EXIF orientation applied when `transposed`.
  raw_size: tuple[int, int]  # (width, height) as stored, before EXIF orientation.
  transposed_size: tuple[int, int]  # (width, height) after EXIF orientation.
  exif: Image.Exif | None
  passthrough: bytes | None  # The original bytes when they are already a plain RGB JPEG that needs no change.
  orientation: int = 1  # EXIF orientation tag (1: as stored).


def output_size(width: int, height: int, max_short_side: int = schema.MAX_SHORT_SIDE) -> tuple[int, int]:
  """(width, height) with the short side at most `max_short_side` (never upscaled)."""
  short = min(width, height)
  if short <= max_short_side:
    return width, height
  scale = max_short_side / short
  return max(1, round(width * scale)), max(1, round(height * scale))


def _open(data: bytes, max_pixels: int) -> Image.Image:
  if not data:
    raise BadInput("empty file (0 bytes)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise BadInput("not a readable image (unknown format or not an image file)") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadInput(f"image too large (decompression bomb guard): {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise BadInput(f"corrupt or truncated image: {type(e).__name__}: {e}") from None
  w, h = img.size
  if w <= 0 or h <= 0:
    raise BadInput(f"image has empty size {w}x{h}")
  if w * h > max_pixels:
    raise BadInput(f"image too large: {w}x{h} = {w * h} pixels > {max_pixels} (decompression bomb guard)")
  return img


def _load(img: Image.Image) -> None:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img.load()
  except Exception as e:  # pylint: disable=broad-except
    raise BadInput(f"corrupt or truncated image: {type(e).__name__}: {e}") from None


def to_rgb(img: Image.Image) -> Image.Image:
  """8-bit RGB from any PIL mode (16-bit scaled, not clipped; alpha composited on white)."""
  mode = img.mode
  if mode == "RGB":
    return img
  if mode.startswith("I") or mode == "F":
    a = np.asarray(img)
    if a.ndim == 3:
      a = a[..., 0]
    a = a.astype(np.float64)
    # 16-bit (and 32-bit integer PNG decodes of 16-bit data) scale by 257; float images are taken as 0..1.
    if mode == "F":
      a = a * 255.0 if a.max(initial=0) <= 1.0 else a
    elif a.max(initial=0) > 255:
      a = a / 257.0
    grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, -1), "RGB")
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
  if has_alpha:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return img.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_short_side: int = schema.MAX_SHORT_SIDE) -> DecodedImage:
  """Decodes a photo to RGB (not yet resized); raises BadInput with the reason."""
  img = _open(data, max_pixels)
  raw_size = img.size
  try:
    exif = img.getexif()
  except Exception:  # pylint: disable=broad-except  # A broken EXIF block is not a broken image.
    exif = None
  orientation = exif.get(ExifTags.Base.Orientation, 1) if exif else 1
  transposed_size = raw_size[::-1] if orientation in (5, 6, 7, 8) else raw_size
  passthrough = None
  if (img.format == "JPEG" and img.mode == "RGB" and orientation in (1, None)
      and output_size(*raw_size, max_short_side) == raw_size):
    passthrough = data
  elif img.format == "JPEG" and img.mode in ("RGB", "L"):
    # Decode at a reduced scale straight away when the output is much smaller (DCT scaling: fast, exact enough).
    tw, th = output_size(*raw_size, max_short_side)
    img.draft("RGB", (tw, th))
  _load(img)
  return DecodedImage(image=img, raw_size=raw_size, transposed_size=transposed_size, exif=exif,
                      passthrough=passthrough, orientation=int(orientation or 1))


def finish_image(decoded: DecodedImage, *, transpose: bool, max_short_side: int = schema.MAX_SHORT_SIDE,
                 quality: int = DEFAULT_JPEG_QUALITY) -> tuple[bytes, tuple[int, int], Image.Image]:
  """(JPEG bytes, (width, height), RGB image) of the schema image: oriented if `transpose`, short side <= limit."""
  full_size = decoded.transposed_size if transpose else decoded.raw_size
  size = output_size(*full_size, max_short_side)
  if decoded.passthrough is not None and (not transpose or decoded.transposed_size == decoded.raw_size):
    return decoded.passthrough, size, decoded.image
  try:
    img = decoded.image
    if transpose:
      img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if img.size != size:
      img = img.resize(size, _RESAMPLE, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
  except BadInput:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadInput(f"cannot convert image: {type(e).__name__}: {e}") from None
  return out.getvalue(), size, img


def open_segmentation(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
  """The decoded segmentation PNG (any mode); BadInput when unreadable. Classes come from `segmentation_classes`."""
  img = _open(data, max_pixels)
  _load(img)
  return img


def segmentation_classes(img: Image.Image, size: tuple[int, int] | None = None,
                         mapper: palette_lib.PaletteMapper | None = None) -> np.ndarray:
  """ADE20K class indices uint8 [H, W] of a segmentation map, resized (nearest) to (width, height) `size` first.

  Accepted: colourised RGB(A) maps (nearest palette colour, so JPEG'd maps work), palette-mode PNGs (their
  indices are used as they are when the file's palette is the ADE20K one, else their colours are mapped), and
  single-channel maps of class indices 0..149. Nearest resizing picks the same pixels in every mode, so resizing
  before mapping gives the map of the full-size classes, with fewer pixels to map.
  """
  if size is not None and img.size != size:
    img = img.resize(size, Image.Resampling.NEAREST)
  colours = palette_lib.palette()
  if img.mode == "P":
    file_palette = np.asarray(img.getpalette() or [], np.uint8).reshape(-1, 3)
    if (len(file_palette) >= palette_lib.NUM_CLASSES
        and np.array_equal(file_palette[:palette_lib.NUM_CLASSES], colours)):
      idx = np.asarray(img)
      if idx.max(initial=0) >= palette_lib.NUM_CLASSES:
        raise BadInput(f"segmentation map has palette index {idx.max()} >= {palette_lib.NUM_CLASSES}")
      return idx.astype(np.uint8)
    img = img.convert("RGB")
  if img.mode in ("L", "I;16", "I"):
    idx = np.asarray(img)
    if idx.max(initial=0) >= palette_lib.NUM_CLASSES:
      raise BadInput(f"single-channel segmentation map has value {idx.max()} >= {palette_lib.NUM_CLASSES} "
                     "(expected class indices)")
    return idx.astype(np.uint8)
  if img.mode != "RGB":
    img = img.convert("RGB")
  mapper = mapper or palette_lib.default_mapper()
  return mapper(np.asarray(img))


def decode_segmentation(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                        mapper: palette_lib.PaletteMapper | None = None) -> np.ndarray:
  """ADE20K class indices uint8 [H, W] of a segmentation PNG at its own size (see `segmentation_classes`)."""
  return segmentation_classes(open_segmentation(data, max_pixels=max_pixels), mapper=mapper)


def match_segmentation(classes_shape: tuple[int, int], image: DecodedImage, *, prefer_oriented: bool = False
                       ) -> bool:
  """Whether the photo must be EXIF-rotated to line up with a map of `classes_shape` (H, W); BadInput if neither.

  The map must have the stored size of the photo, or its size after EXIF rotation, or be a uniform rescale of
  either (within a pixel of rounding); anything else is the map of another image. When both fit (square photos)
  the shape cannot tell, so the map's origin decides: the published MP-16 / benchmark maps were computed on the
  stored pixels (the default), while `data_prep.segment` and the in-process segmenter see the EXIF-rotated photo
  (`prefer_oriented=True`).
  """
  h, w = classes_shape
  rotated = image.orientation not in (1, 0)  # Flips and 180-degree turns keep the size but move the pixels.
  fits_stored = _same_shape((w, h), image.raw_size)
  fits_oriented = rotated and _same_shape((w, h), image.transposed_size)
  if fits_stored and fits_oriented:
    return prefer_oriented
  if fits_stored:
    return False
  if fits_oriented:
    return True
  raise BadInput(f"segmentation map size {w}x{h} does not match image size {image.raw_size[0]}x"
                 f"{image.raw_size[1]}")


def _same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
  """True when (w, h) `a` is (w, h) `b` scaled uniformly, allowing a pixel of rounding."""
  (aw, ah), (bw, bh) = a, b
  return abs(ah - bh * aw / bw) <= 1.0 and abs(aw - bw * ah / bh) <= 1.0


def encode_classes(classes: np.ndarray, size: tuple[int, int]) -> bytes:
  """PNG bytes of class indices uint8 [H, W] resized (nearest) to (width, height); decodes as [H, W, 1]."""
  img = Image.fromarray(np.ascontiguousarray(classes, np.uint8), "L")
  if img.size != size:
    img = img.resize(size, Image.Resampling.NEAREST)
  out = io.BytesIO()
  img.save(out, "PNG", compress_level=3)
  return out.getvalue()


def exif_latlon(exif: Image.Exif | None) -> np.ndarray:
  """float32 [2] (lat, lon) from EXIF GPS tags; BadInput when absent or malformed."""
  if not exif:
    raise BadInput("no EXIF GPS position (no EXIF)")
  try:
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
  except Exception:  # pylint: disable=broad-except
    gps = None
  if not gps or ExifTags.GPS.GPSLatitude not in gps or ExifTags.GPS.GPSLongitude not in gps:
    raise BadInput("no EXIF GPS position")
  try:
    lat = _dms(gps[ExifTags.GPS.GPSLatitude])
    lon = _dms(gps[ExifTags.GPS.GPSLongitude])
    if str(gps.get(ExifTags.GPS.GPSLatitudeRef, "N")).strip().upper().startswith("S"):
      lat = -lat
    if str(gps.get(ExifTags.GPS.GPSLongitudeRef, "E")).strip().upper().startswith("W"):
      lon = -lon
  except Exception as e:  # pylint: disable=broad-except
    raise BadInput(f"malformed EXIF GPS position: {e}") from None
  return check_latlon(lat, lon, where="EXIF GPS")


def _dms(value) -> float:
  parts = [float(v) for v in value]
  while len(parts) < 3:
    parts.append(0.0)
  return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0


def check_latlon(lat, lon, where: str = "") -> np.ndarray:
  """float64 [2] (lat, lon) as read, or BadInput for NaN / non-numeric / out-of-range values. Cells are assigned
  from these float64 values: float32 rounding moves points across S2 cell edges (records store float32)."""
  prefix = f"{where}: " if where else ""
  try:
    lat_f, lon_f = float(lat), float(lon)
  except (TypeError, ValueError):
    raise BadInput(f"{prefix}coordinates are not numbers: lat={lat!r}, lon={lon!r}") from None
  if not (math.isfinite(lat_f) and math.isfinite(lon_f)):
    raise BadInput(f"{prefix}coordinates are not finite: lat={lat_f}, lon={lon_f}")
  if not (-90.0 <= lat_f <= 90.0 and -180.0 <= lon_f <= 180.0):
    raise BadInput(f"{prefix}coordinates out of range: lat={lat_f}, lon={lon_f}")
  return np.array([lat_f, lon_f], np.float64)
