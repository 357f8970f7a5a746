"""Model evaluation: a model with known (fixed) logits reproduces a hand-computed table; padding is dropped."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from translocator_jax.data import registry
from translocator_jax.eval import baselines
from translocator_jax.geo import cells, metrics
from translocator_jax.infer import inference
from translocator_jax.runtime import config_schema, sharding

KM_PER_DEG = 6371.0 * np.pi / 180.0
# Four fine cells: two near Paris (one coarse / middle parent), two in Kansas (another).
FINE_POINTS = np.array([[48.0, 2.0], [48.05, 2.05], [39.0, -98.0], [39.05, -98.05]], np.float32)


class FixedLogits(nn.Module):
  """Logits looked up by the example id written in pixel (0, 0, 0) of the image."""
  table: dict

  def __call__(self, image, seg, train=False):
    idx = image[:, 0, 0, 0].astype(jnp.int32)
    return {h: jnp.asarray(t, jnp.float32)[idx] for h, t in self.table.items()}


def _partitions():
  leaves = cells.leaf_cell_ids(FINE_POINTS)
  parts = []
  for level in (2, 4, 8):
    ids = cells.parent_ids(leaves, level)
    uniq, inverse = np.unique(ids, return_inverse=True)
    means = np.stack([FINE_POINTS[inverse == u].mean(0) for u in range(len(uniq))])
    counts = np.array([10 * (inverse == u).sum() + u for u in range(len(uniq))])
    parts.append(cells.Partition([cells.id_to_token(int(i)) for i in uniq], counts, means))
  return parts


def test_fixed_logits_reproduce_hand_computed_table():
  coarse, middle, fine = _partitions()
  assert (coarse.num_classes, middle.num_classes, fine.num_classes) == (2, 2, 4), "test cells not as planned"
  fine_order = [int(np.argmin(np.abs(fine.latlon_mean - p).sum(1))) for p in FINE_POINTS]
  paris_c = int(np.argmin(np.abs(coarse.latlon_mean[:, 0] - 48)))
  paris_m = int(np.argmin(np.abs(middle.latlon_mean[:, 0] - 48)))
  # Five images. Fine probabilities favour cell 0 (Paris) for image 1 and 3, but their coarse and middle heads
  # are sure of Kansas, so f* picks the best Kansas cell: p_fine * p_middle(parent) * p_coarse(grandparent).
  targets = [0, 2, 1, 3, 0]  # f*'s pick (in FINE_POINTS order), worked out by hand from the logits below
  fine_logits = np.full((5, 4), -4.0)
  coarse_logits = np.zeros((5, 2))
  middle_logits = np.zeros((5, 2))
  for i, t in enumerate(targets):
    kansas = t >= 2
    fine_logits[i, fine_order[t]] = 2.0
    if i in (1, 3):
      fine_logits[i, fine_order[0]] = 2.5  # fine alone: Paris (e^0.5 = 1.65x the Kansas cell)
    coarse_logits[i, paris_c if not kansas else 1 - paris_c] = 3.0  # 20:1
    middle_logits[i, paris_m if not kansas else 1 - paris_m] = 3.0
  model = FixedLogits({"coarse": coarse_logits, "middle": middle_logits, "fine": fine_logits,
                       "scene": np.zeros((5, 3))})
  # True locations due north of each picked cell by 0.005, 0.1, 1.5, 6 and 20 degrees of latitude.
  offsets_deg = np.array([0.005, 0.1, 1.5, 6.0, 20.0])
  true = FINE_POINTS[targets] + np.stack([offsets_deg, np.zeros(5)], 1).astype(np.float32)
  batches = []
  for start in (0, 4):  # batches of 4, the last padded with 3 masked rows
    idx = np.arange(start, start + 4)
    mask = idx < 5
    image = np.zeros((4, 8, 8, 3), np.float32)
    image[:, 0, 0, 0] = np.where(mask, idx, 0)
    batches.append({"image": image, "seg": np.zeros((4, 8, 8, 3), np.float32), "mask": mask,
                    "latlon": np.where(mask[:, None], true[np.minimum(idx, 4)], 0.0).astype(np.float32),
                    "index": np.where(mask, idx, -1).astype(np.int64)})
  preds = inference.predict_dataset(model, {}, batches, mesh=sharding.make_mesh(), partitions=[coarse, middle, fine],
                                     heads={"coarse": 2, "middle": 2, "fine": 4, "scene": 3})
  np.testing.assert_array_equal(preds.index, np.arange(5))
  assert preds.method == "fstar"
  np.testing.assert_allclose(preds.pred_latlon, FINE_POINTS[targets], atol=1e-5)
  fine_only = [0, 0, 1, 0, 0]
  np.testing.assert_allclose(preds.others["fine"], FINE_POINTS[fine_only], atol=1e-5)
  np.testing.assert_array_equal(preds.fine_class, np.asarray(fine_order)[targets])
  tables = inference.tables_from_predictions(preds)
  d = offsets_deg * KM_PER_DEG  # 0.56, 11.1, 166.8, 667.2, 2223.9 km
  expected = {"acc_1km": 0.2, "acc_25km": 0.4, "acc_200km": 0.6, "acc_750km": 0.8, "acc_2500km": 1.0,
              "median_km": d[2], "mean_km": d.mean(), "geoscore": np.mean(5000 * np.exp(-d / 1492.7)), "n": 5}
  for k, v in expected.items():
    assert tables["fstar"][k] == pytest.approx(v, rel=1e-3), k
  # Fine alone puts images 1 and 3 in Paris: thousands of km off.
  assert tables["fine"]["acc_2500km"] == pytest.approx(0.6)
  # Chance: every image at the coarse partition's most populous cell (Kansas: 21 > 20 images).
  chance = baselines.chance_table([coarse, middle, fine], preds.true_latlon)
  kansas = FINE_POINTS[2:].mean(0)
  np.testing.assert_allclose(baselines.most_common_cell_latlon([coarse, middle, fine]), kansas, atol=1e-5)
  assert chance["acc_2500km"] == pytest.approx(0.4)  # images 1 and 3 (Kansas, <= 6 deg north)


def test_knn_predicts_nearest_thumbnail():
  train = np.array([[0.0, 0.0], [10.0, 10.0], [5.0, 0.0]], np.float32)
  latlon = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.float32)
  got = baselines.knn_predict(train, latlon, np.array([[9.0, 9.0], [4.0, 1.0], [0.1, 0.0]], np.float32))
  np.testing.assert_array_equal(got, latlon[[1, 2, 0]])


def test_format_table_has_paper_row():
  text = metrics.format_table([("im2gps / ours", {"acc_1km": 0.1, "acc_25km": 0.2, "acc_200km": 0.3,
                                                    "acc_750km": 0.4, "acc_2500km": 0.5, "median_km": 812.3,
                                                    "geoscore": 2000.0, "n": 237}),
                                 ("im2gps / paper", registry.paper_table("im2gps"))])
  assert "812.3" in text and "19.9" in text and "86.7" in text
  # A row name longer than the usual column (the leakage rows) widens it for every row: the columns stay aligned.
  table = {"acc_1km": 0.1, "acc_25km": 0.2, "acc_200km": 0.3, "acc_750km": 0.4, "acc_2500km": 0.5,
           "median_km": 1.0, "geoscore": 2.0, "n": 3}
  lines = metrics.format_table([("yfcc26k / w/o 12345 near-dups (sim>0.95), refined", table), ("", None),
                                ("yfcc26k / fstar", table)]).splitlines()
  assert len(lines[0]) == len(lines[2]) == len(lines[4]) and lines[2].endswith(lines[4][-60:])
  assert lines[2].index("10.0") == lines[4].index("10.0") > len("yfcc26k / w/o 12345 near-dups (sim>0.95), refined")


def test_evaluation_and_prediction_need_only_the_partitions_of_an_unbuilt_training_set(tmp_path):
  """A real MP-16 checkpoint is evaluated on a benchmark without MP-16's records on disk."""
  from translocator_jax import paths  # pylint: disable=g-import-not-at-top
  from translocator_jax.infer import predictor as predict  # pylint: disable=g-import-not-at-top
  from translocator_jax.runtime import config_io  # pylint: disable=g-import-not-at-top
  config = config_io.load_config(f"{paths.REPO_ROOT / 'configs/translocator_b16_mp16.py'}:runlocal")
  config.data.data_dir = str(tmp_path)  # nothing built here
  with pytest.raises(registry.DatasetMissingError, match="build_mp16"):
    registry.dataset_info(config, "mp16")
  info = registry.dataset_info(config, "mp16", need_records=False)
  assert info.tfds_dir is None
  partitions, palette = predict.inference_assets(config)
  assert [p.num_classes for p in partitions] == [3298, 7202, 12893]
  assert palette.shape == (150, 3)


@pytest.mark.parametrize("tta", ["center", "five_crop"])
def test_forward_finishes_uint8_batches_like_the_host(tta):
  # The evaluator reads uint8 crops (eval_loader's batches); make_forward(model, palette) must give the
  # probabilities of the float32 inputs the host path makes.
  import jax  # pylint: disable=g-import-not-at-top
  from translocator_jax import models  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.pipeline import augment  # pylint: disable=g-import-not-at-top
  cfg = config_schema.complete_section("model", dict(variant="Ti/8", width=32, depth=1, mlp_dim=64, num_heads=2,
                                                     image_size=16, heads={"coarse": 5, "fine": 7},
                                                     head_zeroinit=False))
  model = models.build_model(cfg)
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (10, 3)).astype(np.uint8)
  lead = (3, 5) if tta == "five_crop" else (3,)
  image = rng.integers(0, 256, lead + (16, 16, 3)).astype(np.uint8)
  seg = rng.integers(0, len(palette), lead + (16, 16)).astype(np.uint8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))["params"]
  forward = inference.make_forward(model, palette)
  on_device = forward(params, image, seg)
  on_host = forward(params, augment.normalize(image), augment.seg_to_model_input(seg, "palette", palette))
  assert set(on_device) == {"coarse", "fine"} and on_device["fine"].shape == (3, 7)
  for head in on_device:
    np.testing.assert_array_equal(on_device[head], on_host[head])
  with pytest.raises(ValueError, match="needs the dataset's palette"):
    inference.make_forward(model)(params, image, seg)
