"""The authors' ten-crop views: training batches with a crop axis, ten-crop evaluation, logits averaged per image."""
import jax.numpy as jnp
import numpy as np
from PIL import Image

from translocator_jax.data.pipeline import augment, training
from translocator_jax.data.records import schema, sources
from translocator_jax.train import step as step_lib


def _records(n=4, h=40, w=56):
  rng = np.random.default_rng(0)
  return [{schema.IMAGE: rng.integers(0, 255, (h, w, 3), np.uint8),
           schema.SEGMENTATION: rng.integers(0, 9, (h, w, 1), np.uint8),
           schema.LATLON: np.array([i, i], np.float32), schema.CELLS: np.array([0, 0, i], np.int32),
           schema.SCENE_S3: 1, schema.IMAGE_ID: f"r{i}", sources.INDEX: i} for i in range(n)]


def test_training_batches_have_ten_crops_of_each_photo_and_map():
  loader = training.train_loader(_records(), batch_size=2, image_size=16, seg_input="classes", seed=3,
                                augmentation="authors_ten_crop", shard_index=0, shard_count=1)
  batch = next(iter(loader))
  assert batch["image"].shape == (2, 10, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["seg"].shape == (2, 10, 16, 16) and batch["cells"].shape == (2, 3)
  # Crops 5-9 are crops 0-4 mirrored, for the photo and the map alike.
  np.testing.assert_array_equal(batch["image"][:, 5:], batch["image"][:, :5, :, ::-1])
  np.testing.assert_array_equal(batch["seg"][:, 5:], batch["seg"][:, :5, :, ::-1])
  # The map has no random transform: its crops are those of the map resized to 18 x 18 (16 * 256 / 224).
  records = {int(r[sources.INDEX]): r for r in _records()}
  for row, index in enumerate(batch["index"]):
    seg = records[int(index)][schema.SEGMENTATION][..., 0]
    square = np.asarray(Image.fromarray(seg).resize((18, 18), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(batch["seg"][row], augment.ten_crops(np.repeat(square[..., None], 3, -1),
                                                                       square, 16, 16 / 18)[1])


def test_ten_crop_evaluation_views():
  image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8)
  seg = np.random.default_rng(2).integers(0, 9, (30, 40), np.uint8)
  crops, seg_crops = augment.eval_crops(image, seg, 16, "ten_crop")
  five, seg_five = augment.eval_crops(image, seg, 16, "five_crop")
  assert crops.shape == (10, 16, 16, 3) and seg_crops.shape == (10, 16, 16)
  np.testing.assert_array_equal(crops[:5], five)
  np.testing.assert_array_equal(crops[5:], five[:, :, ::-1])
  np.testing.assert_array_equal(seg_crops[5:], seg_five[:, :, ::-1])


def test_ten_crop_training_averages_logits_over_each_images_crops():
  def apply(image, seg):  # a stand-in model: two logits from each crop's mean pixel and map
    return {"fine": jnp.stack([image.mean(axis=(1, 2, 3)), seg.astype(jnp.float32).mean(axis=(1, 2))], -1)}
  image = jnp.arange(2 * 10, dtype=jnp.float32).reshape(2, 10, 1, 1, 1) * jnp.ones((2, 10, 4, 4, 3))
  seg = jnp.ones((2, 10, 4, 4), jnp.int32)
  logits = step_lib.crop_mean_logits(apply, image, seg)["fine"]
  assert logits.shape == (2, 2)
  # Image 1's crops hold the values 10 ... 19: the mean logit is 14.5 (by hand), and the map's is 1.
  np.testing.assert_allclose(np.asarray(logits), [[4.5, 1.0], [14.5, 1.0]])
  # Without a crop axis the model's logits pass through.
  np.testing.assert_allclose(np.asarray(step_lib.crop_mean_logits(apply, image[:, 0], seg[:, 0])["fine"]),
                             [[0.0, 1.0], [10.0, 1.0]])
