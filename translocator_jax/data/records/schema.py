"""The one record schema every dataset of this project is written in (and every pipeline reads).

One example (a photo, an Earth patch, a benchmark image) is a dict with these keys:

  image         JPEG-encoded RGB, uint8 [H, W, 3]; short side resized to at most MAX_SHORT_SIDE px (as the ISNs
                did, keeping MP-16 near 100 GB).
  segmentation  PNG-encoded class indices, uint8 [H, W, 1], same H and W as `image`. ADE20K-150 indices 0..149 for
                photos; the Earth-patches set uses its own classes (see data/earth_patches.py). Empty (NO_MAP) in
                a set built without maps (photos_to_dataset --no-seg), whose metadata.json then says
                "segmentation_maps": false; readers give such a record a map of zeros the size of its image, and
                only RGB-only models (model.fusion='none', which ignore the map) may read the set.
  latlon        float32 [2], (lat, lon) in degrees.
  scene_s3, scene_s16, scene_s365
                int32 scene labels (Places365 hierarchy as in the benchmark CSVs), -1 where unknown.
  cells         int32 [NUM_PARTITIONS]: the class in each partition (coarse, middle, fine), -1 where none.
  image_id      text: the dataset's own id (file name for MP-16 and the benchmarks).

Building (TFDS) imports TensorFlow through `tfds.features`; reading with `tfds.data_source` / grain does not.
"""
from __future__ import annotations

from translocator_jax.geo import hierarchy

IMAGE = "image"
SEGMENTATION = "segmentation"
LATLON = "latlon"
SCENE_S3 = "scene_s3"
SCENE_S16 = "scene_s16"
SCENE_S365 = "scene_s365"
CELLS = "cells"
IMAGE_ID = "image_id"

PARTITION_NAMES = hierarchy.LEVELS  # the cells' columns, coarse -> fine
NUM_PARTITIONS = len(PARTITION_NAMES)
SCENE_KEYS = {3: SCENE_S3, 16: SCENE_S16, 365: SCENE_S365}
MAX_SHORT_SIDE = 320
UNKNOWN = -1
NO_MAP = b""  # the segmentation field of a record without a map
MAPS_METADATA_KEY = "segmentation_maps"  # metadata.json: False when every record holds NO_MAP


def features():
  """The TFDS FeaturesDict of the schema (import is deferred: only builders need it)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  return tfds.features.FeaturesDict({
      IMAGE: tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="jpeg"),
      SEGMENTATION: tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
      LATLON: tfds.features.Tensor(shape=(2,), dtype=np.float32),
      SCENE_S3: tfds.features.Scalar(dtype=np.int32),
      SCENE_S16: tfds.features.Scalar(dtype=np.int32),
      SCENE_S365: tfds.features.Scalar(dtype=np.int32),
      CELLS: tfds.features.Tensor(shape=(NUM_PARTITIONS,), dtype=np.int32),
      IMAGE_ID: tfds.features.Text(),
  })
