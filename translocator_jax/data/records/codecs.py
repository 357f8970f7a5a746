"""Lean decoding of the records' JPEG photos and PNG class maps: the pixels of `sources` decoding, less overhead.

`sources` decodes with `Image.open(...).convert(...)`, whose Python-level header parsing costs about as much as
decoding a 48 px JPEG. Here the header fields the decoders need are read with `struct` and the pixel data goes
straight to the C decoders (OpenCV's libjpeg-turbo when installed, else Pillow's; Pillow's zlib PNG decoder), with
the same output: tests check equality with `sources` decoding. Anything unusual (grey / CMYK JPEGs, 16-bit,
palette or interlaced PNGs) falls back to the `sources` path.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

try:  # pylint: disable=g-import-not-at-top
  import cv2
  cv2.setNumThreads(1)  # one example per call on small images: threads only add contention to the workers
except ImportError:  # pragma: no cover - opencv-python-headless is a dependency; Pillow still works without it
  cv2 = None

# What decoding damaged bytes raises (Pillow: OSError / UnidentifiedImageError, ValueError "not enough image data",
# SyntaxError for a broken PNG header; OpenCV's own error type): one bad record, not a bug.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError,
                 *((cv2.error,) if cv2 is not None else ()))

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame (not DHT / JPG / DAC)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
  """(height, width, components) from a JPEG's start-of-frame marker, or None when not found."""
  pos, n = 2, len(data)
  if data[:2] != b"\xff\xd8":
    return None
  while pos + 4 <= n:
    if data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
      pos += 2
      continue
    (length,) = struct.unpack_from(">H", data, pos + 2)
    if marker in _SOF_MARKERS:
      if pos + 10 > n:
        return None
      _, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
      return height, width, components
    if marker == 0xDA:  # start of scan before any frame header
      return None
    pos += 2 + length
  return None


def png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
  """(height, width, bit_depth, colour_type, interlace) from a PNG's IHDR, or None when not a PNG."""
  if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    return None
  width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
  return height, width, depth, colour, interlace


def image_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) of a JPEG or PNG from its header (no decoding), or None."""
  head = jpeg_header(data)
  if head is not None:
    return head[0], head[1]
  head = png_header(data)
  return None if head is None else (head[0], head[1])


def decode_rgb(data: bytes) -> np.ndarray:
  """JPEG (or other image) bytes -> uint8 [H, W, 3], equal to sources' decoding (no EXIF rotation either)."""
  head = jpeg_header(data)
  if head is not None and head[2] == 3:
    if cv2 is not None:
      out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
      if out is not None and out.shape[:2] == head[:2]:
        return out
    else:
      return np.asarray(Image.frombytes("RGB", (head[1], head[0]), data, "jpeg", "RGB", ""))
  return pil_decode(data, "RGB")


def decode_rgb_pil(data: bytes) -> Image.Image:
  """decode_rgb's pixels as a Pillow "RGB" image (for Pillow resizing: no array round trip)."""
  head = jpeg_header(data)
  if head is not None and head[2] == 3:
    return Image.frombytes("RGB", (head[1], head[0]), data, "jpeg", "RGB", "")
  return Image.fromarray(pil_decode(data, "RGB"))


def decode_gray(data: bytes, rows: int | None = None) -> Image.Image:
  """PNG (or other image) bytes of a class map -> Pillow "L" image, equal to sources' decoding.

  rows: decode only the top `rows` rows where the format allows (8-bit greyscale PNG; else the whole map).
  """
  head = png_header(data)
  if head is not None and head[2:] == (8, 0, 0):  # 8-bit greyscale, not interlaced: the builders' maps
    height, width = head[:2]
    if rows is not None:
      height = max(1, min(height, int(rows)))
    chunks, pos, n = [], 8, len(data)
    while pos + 8 <= n:
      (length,) = struct.unpack_from(">I", data, pos)
      kind = data[pos + 4:pos + 8]
      if kind == b"IDAT":
        chunks.append(data[pos + 8:pos + 8 + length])
      elif kind == b"IEND":
        break
      pos += 12 + length
    try:
      return Image.frombytes("L", (width, height), b"".join(chunks), "zip", "L")
    except ValueError:
      pass  # damaged data: let Pillow's full reader raise its own error
  with Image.open(io.BytesIO(data)) as im:
    return im.convert("L") if im.mode != "L" else im.copy()


def pil_decode(data: bytes, mode: str) -> np.ndarray:
  """The plain Pillow decode of an image file into `mode` ('RGB', 'L'): the reference every fast path equals."""
  with Image.open(io.BytesIO(data)) as im:
    if im.mode != mode:
      im = im.convert(mode)
    return np.asarray(im)
