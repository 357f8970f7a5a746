"""Reference methods beside the model: always the most common training cell ('chance'), and a nearest-neighbour
search over raw 8x8 colour thumbnails of the training images ('knn', how far pixel matching alone gets)."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from PIL import Image
import tqdm

from translocator_jax.data.records import schema
from translocator_jax.geo import metrics

KNN_THUMB = 8


def most_common_cell_latlon(partitions) -> np.ndarray:
  """[2] the mean coordinate of the coarse partition's most populous training cell (the 'chance' prediction)."""
  coarse = partitions[0]
  return np.asarray(coarse.latlon_mean, np.float32)[int(np.argmax(np.asarray(coarse.counts)))]


def chance_table(partitions, true_latlon: np.ndarray) -> dict[str, float]:
  const = np.broadcast_to(most_common_cell_latlon(partitions), true_latlon.shape)
  return metrics.accuracy_table(const, true_latlon)


def thumbnails(source, indices: Sequence[int] | None = None, size: int = KNN_THUMB, desc: str = "thumbnails"
               ) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, size*size*3] raw colour thumbnails (area-averaged), float32 [N, 2] latlon) of a source."""
  indices = range(len(source)) if indices is None else indices
  feats, latlon = [], []
  for i in tqdm.tqdm(indices, desc=desc, leave=False, disable=jax.process_index() != 0):
    ex = source[int(i)]
    img = Image.fromarray(np.asarray(ex[schema.IMAGE], np.uint8)).resize((size, size), Image.BOX)
    feats.append(np.asarray(img, np.float32).reshape(-1))
    latlon.append(np.asarray(ex[schema.LATLON], np.float32))
  return np.stack(feats), np.stack(latlon)


def knn_predict(train_feats: np.ndarray, train_latlon: np.ndarray, query_feats: np.ndarray,
                chunk: int = 1024) -> np.ndarray:
  """latlon of each query's nearest training thumbnail (squared L2)."""
  sq = (train_feats ** 2).sum(1)
  out = np.empty((len(query_feats), 2), np.float32)
  for s in range(0, len(query_feats), chunk):
    q = query_feats[s:s + chunk]
    d = sq[None, :] - 2.0 * q @ train_feats.T
    out[s:s + chunk] = train_latlon[np.argmin(d, axis=1)]
  return out


def knn_table(train_source, test_source, test_index: np.ndarray, true_latlon: np.ndarray) -> dict[str, float]:
  train_x, train_ll = thumbnails(train_source, desc="kNN: train thumbnails")
  test_x, _ = thumbnails(test_source, test_index, desc="kNN: test thumbnails")
  return metrics.accuracy_table(knn_predict(train_x, train_ll, test_x), true_latlon)
