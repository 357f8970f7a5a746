"""Lean decoders give the pixels of sources' Pillow decoding, with and without OpenCV; headers read right."""
import io

import dataset_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from translocator_jax.data.records import codecs
from translocator_jax.data.records import sources


def _photo(h, w, seed):
  """Smooth ramps plus noise: every DCT band in use, so decoder differences would show."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
  return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _jpeg(arr, **kw):
  out = io.BytesIO()
  Image.fromarray(arr).save(out, "JPEG", **kw)
  return out.getvalue()


JPEGS = {
    "q90_420": _jpeg(_photo(37, 53, 0), quality=90),
    "q95_444": _jpeg(_photo(48, 48, 1), quality=95, subsampling=0),
    "progressive": _jpeg(_photo(40, 61, 2), quality=85, progressive=True),
    "restart_markers": _jpeg(_photo(64, 80, 3), quality=90, restart_marker_blocks=1),
    "exif_rotated": fx.exif_rotated(_photo(20, 24, 4)),  # decoded as stored (no rotation), like sources
    "grey": fx.jpeg(_photo(20, 24, 5), "L"),  # one component: Pillow fallback
    "cmyk": fx.jpeg(_photo(20, 24, 6), "CMYK"),
    "png_rgb": fx.png(Image.fromarray(_photo(20, 24, 7))),
}


@pytest.fixture(params=["opencv", "pillow"])
def decoder(request, monkeypatch):
  if request.param == "pillow":
    monkeypatch.setattr(codecs, "cv2", None)
  elif codecs.cv2 is None:
    pytest.fail("opencv-python-headless is a dependency (setup.py) and is not installed")
  return request.param


@pytest.mark.parametrize("name", sorted(JPEGS))
def test_decode_rgb_equals_sources_decoding(name, decoder):
  data = JPEGS[name]
  want = codecs.pil_decode(data, "RGB")
  got = codecs.decode_rgb(data)
  assert got.dtype == np.uint8 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(codecs.decode_rgb_pil(data)), want)
  assert codecs.image_size(data) == want.shape[:2]


def test_jpeg_header_reads_size_and_components():
  assert codecs.jpeg_header(JPEGS["q90_420"]) == (37, 53, 3)
  assert codecs.jpeg_header(JPEGS["progressive"]) == (40, 61, 3)
  assert codecs.jpeg_header(JPEGS["grey"]) == (20, 24, 1)
  assert codecs.jpeg_header(JPEGS["png_rgb"]) is None
  assert codecs.jpeg_header(b"\xff\xd8\xff\xe0\x00") is None  # truncated: no frame header
  with pytest.raises(Exception):  # damaged data still fails loudly (Pillow's error)
    codecs.decode_rgb(JPEGS["q90_420"][:40])


def _classes(h, w, seed):
  return np.kron(np.random.default_rng(seed).integers(0, 150, (h // 4 + 1, w // 4 + 1)),
                 np.ones((4, 4), int))[:h, :w].astype(np.uint8)


@pytest.mark.parametrize("compress_level", [0, 3, 9])
def test_decode_gray_equals_sources_decoding_and_prefix_rows(compress_level):
  classes = _classes(45, 67, compress_level)
  out = io.BytesIO()
  Image.fromarray(classes, "L").save(out, "PNG", compress_level=compress_level)
  data = out.getvalue()
  want = codecs.pil_decode(data, "L")
  np.testing.assert_array_equal(want, classes)
  np.testing.assert_array_equal(np.asarray(codecs.decode_gray(data)), want)
  for rows in (1, 17, 44, 45, 99):
    got = np.asarray(codecs.decode_gray(data, rows=rows))
    np.testing.assert_array_equal(got, want[:rows])
  assert codecs.image_size(data) == (45, 67)


def test_decode_gray_falls_back_for_other_pngs():
  rgb = _photo(20, 24, 8)
  for img in (Image.fromarray(rgb), Image.fromarray(rgb).convert("P"),
              Image.fromarray((_classes(20, 24, 1).astype(np.uint16) * 300))):
    data = fx.png(img)
    want = codecs.pil_decode(data, "L")
    np.testing.assert_array_equal(np.asarray(codecs.decode_gray(data)), want)
    np.testing.assert_array_equal(np.asarray(codecs.decode_gray(data, rows=5)), want)  # no prefix: the whole map
