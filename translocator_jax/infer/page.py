"""What the web page (translocator-serve, commands/serve.py) does with a visitor's request, without the web
framework: one Predictor, loaded once, answers each photo as translocator-predict would (the same text, figure and
CSV row), one request at a time.

A visitor's files arrive as paths in the server's temporary upload folder; the answer names them by their file
name only, and everything drawn for a request is written under the folder the caller gives (a temporary one).
A photo that cannot be used (not an image, a decompression bomb, an empty or corrupt file, a map of another size)
gets the one line translocator-predict prints for it, and the next request is served as usual.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image

from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.geo import distance
from translocator_jax.infer import prediction_csv
from translocator_jax.infer.predictor import Prediction, Predictor, failure_line, format_prediction

TABLE_HEADERS = ["#", "probability", "place", "country", "lat", "lon"]
NO_PHOTO = "no photo: upload a JPEG or PNG photo, paste one, or pick an example"


@dataclasses.dataclass
class Answer:
  prediction: Prediction
  text: str                             # translocator-predict's words for it (or its one-line failure)
  rows: list[list[Any]]                 # the top-k table, TABLE_HEADERS
  figure: pathlib.Path | None = None    # the prediction drawn (photo beside the zoomed map)
  csv: pathlib.Path | None = None       # translocator-predict --csv's header and row

  @property
  def json(self) -> dict[str, Any]:
    return json.loads(json.dumps(self.prediction.to_json(), default=float))


class Page:
  """A Predictor behind a page: a photo (and an optional map) in, the command line's answer out. Requests are
  served one at a time (the model's calls and matplotlib's figures are not shared between threads)."""

  def __init__(self, predictor: Predictor, *, top_k: int = 5):
    self.predictor = predictor
    self.top_k = max(1, min(int(top_k), len(predictor.cell_latlon)))
    self.refine = predictor.refiner is not None
    self._lock = threading.Lock()

  def answer(self, photo: str | None, seg: str | None, out_dir) -> Answer:
    """The answer to one upload; figure and CSV are written under out_dir. Never raises for a bad upload."""
    if not photo:
      return Answer(Prediction("<no photo>", error=NO_PHOTO), NO_PHOTO, [])
    names = {str(photo): pathlib.Path(photo).name}
    if seg:
      names[str(seg)] = pathlib.Path(seg).name
    with self._lock:
      (p,) = self.predictor.predict([str(photo)], None if not seg else [str(seg)], top_k=self.top_k,
                                    batch_size=1, keep_inputs=True)
      p.source = names[str(photo)]
      if p.error:
        p.error = _visitor_names(p.error, names)
        return Answer(p, failure_line(p), [])
      out_dir = pathlib.Path(out_dir)
      stem = pathlib.Path(p.source).stem or "photo"
      figure = self.predictor.figure(p, out_dir / f"{stem}_prediction.png", title=p.source)
    csv_path = out_dir / f"{stem}_prediction.csv"
    csv_path.write_text(prediction_csv.csv_text(p, self.top_k, self.refine), encoding="utf-8")
    rows = [[c.rank, f"{c.probability:.1%}", c.place, c.country, round(c.latlon[0], 4), round(c.latlon[1], 4)]
            for c in p.candidates]
    return Answer(p, _words(p), rows, figure, csv_path)

  def warm_up(self, out_dir) -> None:
    """One prediction and figure before the first visitor, so that no visitor waits for compiling and loading."""
    size = self.predictor.image_size
    with self._lock:
      (p,) = self.predictor.predict([np.full((size, size, 3), 128, np.uint8)], [np.zeros((size, size), np.uint8)],
                                    top_k=self.top_k, batch_size=1, keep_inputs=True)
      self.predictor.figure(p, pathlib.Path(out_dir) / "warm_up.png")


def _visitor_names(text: str, names: dict[str, str]) -> str:
  """A message with the server's paths of the uploads replaced by the visitor's file names."""
  for path, name in names.items():
    text = text.replace(path, name)
  return text


def _words(p: Prediction) -> str:
  """format_prediction's text, and the distance from guess 1 to the true location when the photo carries one."""
  text = format_prediction(p)
  if p.true_latlon is not None:
    km = float(distance.haversine_km_numpy(np.asarray(p.candidates[0].latlon), np.asarray(p.true_latlon)))
    text += f"\n  guess 1 is {km:,.0f} km from the true location"
  return text


def earth_examples(predictor: Predictor, folder, count: int = 4) -> list[list[str]]:
  """For a model trained on the Earth patches: [photo, map] pairs of test patches spread over the test split,
  each a JPEG carrying its true location as EXIF GPS (so the page shows the truth and the error) beside its
  land-cover map (PNG of class indices); [] for any other training set."""
  if predictor.config.data.train != "earth_patches":
    return []
  info = registry.dataset_info(predictor.config, "earth_patches")
  test = sources.open_source(info.tfds_dir, "test")
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  pairs = []
  for i in np.unique(np.linspace(0, len(test) - 1, count).round().astype(int)):
    record = test[int(i)]
    photo, seg = folder / f"earth_test_{i}.jpg", folder / f"earth_test_{i}_map.png"
    write_jpeg_with_gps(record[schema.IMAGE], record[schema.LATLON], photo)
    Image.fromarray(np.asarray(record[schema.SEGMENTATION], np.uint8).reshape(record[schema.IMAGE].shape[:2])
                    ).save(seg)
    pairs.append([str(photo), str(seg)])
  return pairs


def write_jpeg_with_gps(pixels: np.ndarray, latlon: Sequence[float], path) -> None:
  """A JPEG (quality 95) whose EXIF GPS position is latlon, as a camera writes it (degrees, minutes, seconds)."""
  def dms(value: float) -> tuple[float, float, float]:
    value = abs(float(value))
    degrees, minutes = int(value), int(value * 60) % 60
    return float(degrees), float(minutes), round(value * 3600 - degrees * 3600 - minutes * 60, 3)
  lat, lon = (float(v) for v in latlon)
  exif = Image.Exif()
  exif.get_ifd(0x8825).update({1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)})
  Image.fromarray(np.asarray(pixels, np.uint8)).save(path, quality=95, exif=exif)
