"""grain pipelines: aligned augmentation, exact iterator state, sharding, padded evaluation; fast paths."""
import io
import re

import numpy as np
import pytest
from PIL import Image

from translocator_jax.data.pipeline import augment
from translocator_jax.data.pipeline import evaluation, training
from translocator_jax.data.records import codecs, schema
from translocator_jax.data.records import sources

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.uint8)


class ListSource:
  """In-memory records in the decoded schema (what sources.open_source yields)."""

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return dict(self.records[int(i)], **{sources.INDEX: np.int64(i)})


def blocky_records(n, height=48, width=64, block=8, seed=0):
  """Photos whose colours *are* their class map: palette colours in block x block squares."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    coarse = rng.integers(0, len(PALETTE), (height // block, width // block)).astype(np.uint8)
    classes = np.kron(coarse, np.ones((block, block), np.uint8))
    out.append({
        schema.IMAGE: PALETTE[classes],
        schema.SEGMENTATION: classes[..., None],
        schema.LATLON: np.array([i % 90, -i], np.float32),
        schema.CELLS: np.array([i % 3, i % 5, i], np.int32),
        schema.SCENE_S3: np.int32(i % 3 - 1),
        schema.IMAGE_ID: f"img{i}",
    })
  return out


def _stack(batches):
  """The batches of a loader as one batch."""
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _as_the_model_reads(batch, seg_input, palette=PALETTE):
  """A uint8 batch finished by the batch contract's definition (augment.normalize / seg_to_model_input): what
  device_finish.DeviceFinish must give."""
  return dict(batch, image=augment.normalize(batch["image"]),
              seg=augment.seg_to_model_input(batch["seg"], seg_input, palette))


def _colour_matches(batch):
  """Among pixels showing a pure palette colour (block interiors), the share whose map class is that colour's.

  Bilinear resampling blends colours across block borders; those pixels match no palette colour and are left out.
  """
  rgb = batch["image"].astype(np.float32)
  dist = np.abs(rgb[..., None, :] - PALETTE.astype(np.float32)).max(-1)  # [..., classes]
  pure = dist.min(-1) < 8.0
  assert pure.mean() > 0.3
  return np.mean(dist.argmin(-1)[pure] == batch["seg"][pure])


def test_image_and_map_stay_aligned_through_crop_and_flip():
  src = ListSource(blocky_records(16))
  loader = training.train_loader(src, batch_size=16, image_size=32, seg_input="classes", seed=3,
                                 shard_index=0, shard_count=1, num_epochs=1)
  batch = next(iter(loader))
  assert batch["seg"].dtype == np.uint8 and batch["seg"].shape == (16, 32, 32)
  assert _colour_matches(batch) > 0.99
  # The check can fail: the same map mirrored (image flipped alone) or shifted by a pixel or two loses the match.
  assert _colour_matches(dict(batch, seg=batch["seg"][:, :, ::-1])) < 0.5
  assert _colour_matches(dict(batch, seg=np.roll(batch["seg"], 1, axis=2))) < 0.95
  assert _colour_matches(dict(batch, seg=np.roll(batch["seg"], 2, axis=1))) < 0.9
  # And crops differ from example to example (it is augmentation, not a fixed resize).
  crops = [augment.random_resized_crop_box(np.random.default_rng(s), 48, 64) for s in range(5)]
  assert len(set(crops)) == 5


def test_palette_mode_gives_normalised_palette_colours():
  import jax  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.pipeline import device_finish  # pylint: disable=g-import-not-at-top
  src = ListSource(blocky_records(8))
  kw = dict(batch_size=8, image_size=24, seed=1, shard_index=0, shard_count=1, num_epochs=1)
  by_class = next(iter(training.train_loader(src, seg_input="classes", **kw)))
  by_colour = next(iter(training.train_loader(src, seg_input="palette", palette=PALETTE, **kw)))
  for k in by_class:  # the same crops: the colours are made in the step
    np.testing.assert_array_equal(by_colour[k], by_class[k], err_msg=k)
  _, colours = jax.jit(device_finish.DeviceFinish("palette", PALETTE))(by_colour["image"], by_colour["seg"])
  assert colours.shape == (8, 24, 24, 3) and colours.dtype == np.float32
  np.testing.assert_allclose(colours, augment.normalize(PALETTE[by_class["seg"]]), rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="palette"):
    training.train_loader(src, seg_input="palette", palette=None, **kw)


def test_batch_fields_follow_the_contract():
  src = ListSource(blocky_records(10))
  batch = next(iter(training.train_loader(src, batch_size=4, image_size=16, seg_input="classes", seed=0,
                                          shard_index=0, shard_count=1)))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 16, 16, 3)
  assert batch["seg"].dtype == np.uint8 and batch["seg"].shape == (4, 16, 16)
  assert batch["latlon"].dtype == np.float32 and batch["latlon"].shape == (4, 2)
  assert batch["cells"].dtype == np.int32 and batch["cells"].shape == (4, 3)
  assert batch["scene"].dtype == np.int32 and batch["mask"].dtype == bool and batch["mask"].all()
  assert batch["index"].dtype == np.int64
  for k, i in enumerate(batch["index"]):
    rec = src.records[i]
    np.testing.assert_array_equal(batch["cells"][k], rec[schema.CELLS])
    np.testing.assert_array_equal(batch["latlon"][k], rec[schema.LATLON])
    assert batch["scene"][k] == rec[schema.SCENE_S3]


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("worker_count", [0, 1])
def test_iterator_state_round_trips_mid_epoch(worker_count):
  src = ListSource(blocky_records(20, height=16, width=16, block=4))
  loader = training.train_loader(src, batch_size=4, image_size=8, seg_input="classes", seed=5,
                                 shard_index=0, shard_count=1, num_epochs=3, worker_count=worker_count)
  it = iter(loader)
  _take(it, 3)                   # mid-epoch (5 batches an epoch)
  state = it.get_state()
  expected = _take(it, 6)        # runs over the epoch boundary
  resumed = iter(loader)
  resumed.set_state(state)
  got = _take(resumed, 6)
  for a, b in zip(expected, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Within an epoch every record appears at most once; across epochs the order changes.
  fresh = _take(iter(loader), 10)
  first = np.concatenate([b["index"] for b in fresh[:5]])
  second = np.concatenate([b["index"] for b in fresh[5:]])
  assert len(set(first)) == 20 and len(set(second)) == 20
  assert not np.array_equal(first, second)


def test_train_shards_are_disjoint():
  src = ListSource(blocky_records(24, height=16, width=16, block=4))
  seen = []
  for shard in range(3):
    loader = training.train_loader(src, batch_size=4, image_size=8, seg_input="classes", seed=2,
                                   shard_index=shard, shard_count=3, num_epochs=1)
    seen.append(np.concatenate([b["index"] for b in loader]))
  assert all(len(s) == 8 for s in seen)
  assert sorted(np.concatenate(seen).tolist()) == list(range(24))


@pytest.mark.parametrize("n,batch,shards", [(37, 8, 3), (5, 4, 2), (16, 4, 1), (2, 4, 3)])
def test_eval_padding_counts_every_example_once(n, batch, shards):
  src = ListSource(blocky_records(n, height=16, width=24, block=4))
  counts = np.zeros(n, int)
  lengths = set()
  for shard in range(shards):
    loader = evaluation.eval_loader(src, batch_size=batch, image_size=12, seg_input="classes",
                                  shard_index=shard, shard_count=shards)
    batches = list(loader)
    assert len(batches) == len(loader)
    lengths.add(len(batches))
    for b in batches:
      assert b["image"].shape == (batch, 12, 12, 3) and b["mask"].shape == (batch,)
      np.add.at(counts, b["index"][b["mask"]], 1)
      assert (b["index"][~b["mask"]] == -1).all()
  assert len(lengths) == 1  # every process runs the same number of steps
  np.testing.assert_array_equal(counts, np.ones(n, int))


def test_eval_center_and_five_crop():
  src = ListSource(blocky_records(6, height=48, width=64, block=8))
  kw = dict(batch_size=4, image_size=24, seg_input="classes", shard_index=0, shard_count=1)
  center = _stack(list(evaluation.eval_loader(src, tta="center", **kw)))
  five = _stack(list(evaluation.eval_loader(src, tta="five_crop", **kw)))
  assert five["image"].shape == (8, 5, 24, 24, 3) and five["seg"].shape == (8, 5, 24, 24)
  # The fifth crop is the centre crop; corner crops differ from it.
  np.testing.assert_array_equal(five["image"][:, 4], center["image"])
  np.testing.assert_array_equal(five["seg"][:, 4], center["seg"])
  assert not np.array_equal(five["image"][:, 0], five["image"][:, 3])
  for k in range(5):
    assert _colour_matches(dict(image=five["image"][:6, k], seg=five["seg"][:6, k])) > 0.99
  # Evaluation is deterministic.
  again = _stack(list(evaluation.eval_loader(src, tta="five_crop", **kw)))
  np.testing.assert_array_equal(again["image"], five["image"])


def assert_finished_image(got, want, platform):
  """The same bits as the host on CPU/GPU (table lookup); on a TPU (multiply-add) within a fused multiply-add's
  last-bit rounding."""
  if platform == "tpu":
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=2e-7)
  else:
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])  # the TPU path (no gathers) runs here on the CPU
@pytest.mark.parametrize("tta", ["center", "five_crop"])
@pytest.mark.parametrize("seg_input", ["palette", "classes"])
def test_eval_batches_finished_on_device_are_what_the_model_reads(tta, seg_input, platform):
  import jax  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.pipeline import device_finish  # pylint: disable=g-import-not-at-top
  src = ListSource(blocky_records(6, height=40, width=56, block=8))
  kw = dict(batch_size=4, image_size=24, seg_input=seg_input, palette=PALETTE, tta=tta, shard_index=0,
            shard_count=1)
  raw = _stack(list(evaluation.eval_loader(src, **kw)))
  assert raw["image"].dtype == raw["seg"].dtype == np.uint8
  assert raw["seg"].shape == raw["image"].shape[:-1]  # class map: no colour axis
  want = _as_the_model_reads(raw, seg_input)
  image, seg = jax.jit(device_finish.DeviceFinish(seg_input, PALETTE, platform))(raw["image"], raw["seg"])
  assert_finished_image(image, want["image"], platform)
  np.testing.assert_array_equal(seg, want["seg"])
  assert seg.dtype == want["seg"].dtype


def test_bad_arguments_are_named():
  src = ListSource(blocky_records(4, height=16, width=16, block=4))
  with pytest.raises(ValueError, match="seg_input"):
    evaluation.eval_loader(src, batch_size=2, image_size=8, seg_input="rgb", shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="tta"):
    evaluation.eval_loader(src, batch_size=2, image_size=8, seg_input="classes", tta="twenty_crop",
                         shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="cannot fill a batch"):
    training.train_loader(src, batch_size=8, image_size=8, seg_input="classes", shard_index=0, shard_count=1)


# ------------------------------------------------------------------------------------------------ fast paths


def _textured(h, w, seed):
  """Ramps, blocks and noise: sharp edges and fine detail, where resampling differences show."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  blocks = np.kron(rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3)), np.ones((5, 5, 1)))[:h, :w]
  ramp = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
  return np.clip(0.5 * blocks + 0.4 * ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _boxes(h, w, size, upscaled, n=24):
  rng = np.random.default_rng(1)
  out = []
  while len(out) < n:
    box = augment.random_resized_crop_box(rng, h, w, scale=(0.05, 1.0))
    if (max(box[2] - box[0], box[3] - box[1]) <= size) == upscaled:
      out.append(box)
  return out


@pytest.mark.parametrize("flip", [False, True])
def test_crop_resize_matches_pillow_resample(flip):
  h, w, size = 60, 80, 40
  image = _textured(h, w, 0)
  classes = blocky_records(1, height=h, width=w, block=5, seed=2)[0][schema.SEGMENTATION][..., 0]
  assert augment.warps(_boxes(h, w, size, True, 1)[0], size)  # OpenCV is installed: the fast path is tested
  for upscaled in (True, False):
    for box in _boxes(h, w, size, upscaled):
      ref_image, ref_seg = augment.resample(image, classes, box, size, flip=flip)
      got_image, got_seg = augment.crop_resize(image, classes, box, size, flip=flip)
      assert got_image.flags.c_contiguous and got_seg.flags.c_contiguous
      # The map: nearest neighbour, exactly the reference (also from a map cut below the box).
      np.testing.assert_array_equal(got_seg, ref_seg)
      rows = int(np.ceil(box[3]))
      np.testing.assert_array_equal(augment.crop_resize(image, classes[:rows], box, size, flip=flip)[1], ref_seg)
      diff = np.abs(got_image.astype(int) - ref_image.astype(int))
      if upscaled:  # OpenCV's warp: Pillow's 2-tap bilinear up to 1/32 px sample positions and rounding
        assert diff.max() <= 6 and diff.mean() < 0.5, (box, diff.max(), diff.mean())
      else:  # downscaled: Pillow's antialiasing filter itself
        np.testing.assert_array_equal(got_image, ref_image)
      # And the check can fail: the warp off by a pixel, or unflipped, is far from the reference.
      dx = 1.0 if box[2] + 1 <= w else -1.0
      shifted = augment.crop_resize(image, classes, (box[0] + dx, box[1], box[2] + dx, box[3]), size, flip=flip)[0]
      assert np.abs(shifted.astype(int) - ref_image).mean() > 2.0


def test_crop_resize_without_antialias_warps_downscaled_boxes():
  image = _textured(60, 80, 3)
  classes = np.zeros((60, 80), np.uint8)
  for box in _boxes(60, 80, 24, upscaled=False, n=6):
    ref = augment.resample(image, classes, box, 24)[0].astype(int)
    fast = augment.crop_resize(image, classes, box, 24, antialias=False)[0].astype(int)
    assert augment.warps(box, 24, antialias=False) and not augment.warps(box, 24)
    assert np.abs(fast - ref).mean() < 12  # the same crop, sampled without the antialiasing filter


def test_the_finishing_tables_hold_the_normalised_values():
  rng = np.random.default_rng(0)
  segs = rng.integers(0, len(PALETTE), (3, 7, 9), dtype=np.uint8)
  table = augment.palette_table(PALETTE)
  np.testing.assert_array_equal(table[segs, 0], augment.seg_to_model_input(segs, "palette", PALETTE))
  np.testing.assert_array_equal(table[len(PALETTE):], 0)  # classes past the palette read as zeros
  levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  np.testing.assert_array_equal(augment.image_lut()[:, 0], augment.normalize(levels))
  with pytest.raises(ValueError, match="palette"):
    augment.palette_table(np.zeros((300, 3), np.uint8))


def _encode(records):
  """The records as stored: JPEG photo, PNG map (what an ArrayRecord source read undecoded gives)."""
  out = []
  for rec in records:
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(rec[schema.IMAGE]).save(jpg, "JPEG", quality=90)
    Image.fromarray(rec[schema.SEGMENTATION][..., 0], "L").save(png, "PNG")
    out.append(dict(rec, **{schema.IMAGE: jpg.getvalue(), schema.SEGMENTATION: png.getvalue()}))
  return out


class UndecodedSource(ListSource):
  """Encoded records that decode like sources.ArrayRecordSource (decode=True) unless read undecoded()."""

  decode = True

  def __getitem__(self, i):
    ex = super().__getitem__(i)
    if self.decode:  # as sources.ArrayRecordSource decodes
      decode = codecs.pil_decode
      ex[schema.IMAGE] = decode(ex[schema.IMAGE], "RGB")
      ex[schema.SEGMENTATION] = decode(ex[schema.SEGMENTATION], "L")[..., None]
    return ex

  def undecoded(self):
    other = UndecodedSource(self.records)
    other.decode = False
    return other


@pytest.mark.parametrize("seg_input", ["palette", "classes"])
def test_encoded_records_give_the_batches_of_decoded_ones(seg_input):
  """train_loader reads an undecodable source's bytes and decodes them itself: the same batches, bit for bit."""
  encoded = UndecodedSource(_encode(blocky_records(12, height=40, width=56, block=4, seed=7)))
  decoded = ListSource([encoded[i] for i in range(len(encoded))])  # decoded by sources' Pillow path
  kw = dict(batch_size=6, image_size=32, seg_input=seg_input, palette=PALETTE, seed=9, shard_index=0,
            shard_count=1, num_epochs=2)
  a = list(training.train_loader(decoded, **kw))
  b = list(training.train_loader(encoded, **kw))
  assert len(a) == len(b) == 4
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  assert not np.array_equal(b[0]["image"], b[2]["image"])  # epochs differ


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("seg_input", ["palette", "classes"])
def test_training_batches_finished_on_device_are_what_the_model_reads(seg_input, platform):
  import jax  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.pipeline import device_finish  # pylint: disable=g-import-not-at-top
  src = ListSource(blocky_records(8, height=16, width=16, block=4))
  kw = dict(batch_size=4, image_size=8, seg_input=seg_input, palette=PALETTE, seed=3, shard_index=0,
            shard_count=1, num_epochs=1)
  raw = list(training.train_loader(src, **kw))
  assert len(raw) == 2
  finish = jax.jit(device_finish.DeviceFinish(seg_input, PALETTE, platform))
  for r in raw:
    assert r["image"].dtype == r["seg"].dtype == np.uint8 and r["seg"].shape == (4, 8, 8)
    want = _as_the_model_reads(r, seg_input)
    image, seg = finish(r["image"], r["seg"])
    assert_finished_image(image, want["image"], platform)
    np.testing.assert_array_equal(seg, want["seg"])
    assert seg.dtype == (np.float32 if seg_input == "palette" else np.int32)


def test_device_finish_passes_float_inputs_and_needs_a_palette_for_uint8_maps():
  from translocator_jax.data.pipeline import device_finish  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
  colours = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
  out_image, out_seg = device_finish.DeviceFinish("palette", None)(image, colours)
  np.testing.assert_array_equal(out_image, image)
  np.testing.assert_array_equal(out_seg, colours)
  with pytest.raises(ValueError, match="needs the dataset's palette"):
    device_finish.DeviceFinish("palette", None).seg(np.zeros((2, 4, 4), np.uint8))


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_every_class_and_classes_past_the_palette_finish_like_the_host_table(platform):
  import jax  # pylint: disable=g-import-not-at-top
  from translocator_jax.data.pipeline import augment, device_finish  # pylint: disable=g-import-not-at-top
  palette = np.random.default_rng(2).integers(0, 256, (150, 3)).astype(np.uint8)
  seg = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)  # 150 classes and 106 past the palette
  rgb = np.stack([seg[0], 255 - seg[0], seg[0] // 3], axis=-1)[None]
  image, colours = jax.jit(device_finish.DeviceFinish("palette", palette, platform))(rgb, seg)
  np.testing.assert_array_equal(colours, augment.palette_table(palette)[seg.reshape(-1), 0].reshape(1, 16, 16, 3))
  assert_finished_image(image, augment.normalize(rgb), platform)


def test_classes_past_the_palette_are_refused_naming_the_records():
  records = blocky_records(4, height=16, width=16, block=4)
  records[2][schema.SEGMENTATION] = np.full_like(records[2][schema.SEGMENTATION], len(PALETTE) + 3)
  kw = dict(batch_size=4, image_size=8, seg_input="palette", palette=PALETTE, seed=3, shard_index=0,
            shard_count=1, num_epochs=1)
  with pytest.raises(ValueError, match=r"past the palette \(8 colours\).*'img2': 11"):
    next(iter(training.train_loader(ListSource(records), **kw)))


def test_shards_get_different_augmentations():
  src = ListSource(blocky_records(1, height=24, width=24, block=4) * 16)  # every record the same photo
  kw = dict(batch_size=8, image_size=16, seg_input="classes", seed=1, shard_count=2, num_epochs=1)
  first = next(iter(training.train_loader(src, shard_index=0, **kw)))
  second = next(iter(training.train_loader(src, shard_index=1, **kw)))
  assert not np.array_equal(first["image"], second["image"])


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.sort(np.concatenate([a, b]))
  return np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                - np.searchsorted(np.sort(b), grid, "right") / len(b)).max()


@pytest.mark.parametrize("hw", [(48, 48), (320, 480), (400, 150)])  # square; photo; often falling back
def test_batched_crop_boxes_have_the_distribution_of_single_ones(hw):
  n = 4000
  h, w = hw
  rng = np.random.default_rng(0)
  single = np.array([augment.random_resized_crop_box(rng, h, w) for _ in range(n)])
  batched = augment.random_resized_crop_boxes(np.random.default_rng(1), np.full(n, h), np.full(n, w))
  for boxes in (single, batched):
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w + 1e-9).all() and (boxes[:, 3] <= h + 1e-9).all()

  def stats(b):
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return {"area": bw * bh / (h * w), "log_aspect": np.log(bw / bh),
            "x": (b[:, 0] + b[:, 2]) / (2 * w), "y": (b[:, 1] + b[:, 3]) / (2 * h)}
  a, b = stats(single), stats(batched)
  for key in a:
    assert _ks(a[key], b[key]) < 0.04, key  # ~1.3x the 5% critical value for n = m = 4000
  # The statistic does tell distributions apart: a narrower area range is far off.
  narrow = augment.random_resized_crop_boxes(np.random.default_rng(1), np.full(n, h), np.full(n, w), scale=(0.5, 1))
  assert _ks(a["area"], stats(narrow)["area"]) > 0.1


def test_record_whose_map_size_differs_is_named_and_skipped():
  records = _encode(blocky_records(4, height=16, width=16, block=4))
  bad = _encode(blocky_records(1, height=16, width=24, block=4, seed=3))[0]
  records[2] = dict(records[2], **{schema.SEGMENTATION: bad[schema.SEGMENTATION]})
  loader = training.train_loader(UndecodedSource(records), batch_size=4, image_size=8, seg_input="classes",
                                 shard_index=0, shard_count=1, num_epochs=1)
  batch = next(iter(loader))  # the other records train; the trainer names this one (train/bad_records.py)
  row = batch["index"].tolist().index(2)
  assert batch["mask"].tolist() == [n != row for n in range(4)]
  assert re.search(r"img2.*differ in size", batch["error"][row])
  assert [e for n, e in enumerate(batch["error"]) if n != row] == [""] * 3


@pytest.mark.parametrize("worker_count", [0, 1])
def test_undecodable_records_are_masked_and_their_reasons_reach_the_main_process(worker_count):
  records = _encode(blocky_records(8, height=16, width=16, block=4))
  records[3] = dict(records[3], **{schema.IMAGE: b"not a photo"})
  records[6] = dict(records[6], **{schema.SEGMENTATION: records[6][schema.SEGMENTATION][:40]})  # a map cut short
  loader = training.train_loader(UndecodedSource(records), batch_size=4, image_size=8, seg_input="classes",
                                 shard_index=0, shard_count=1, num_epochs=1, worker_count=worker_count)
  batches = list(iter(loader))
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  errors = np.concatenate([b["error"] for b in batches])
  assert sorted(index.tolist()) == list(range(8)) and sorted(index[~mask].tolist()) == [3, 6]
  reasons = dict(zip(index[~mask].tolist(), errors[~mask]))
  assert reasons[3] == "cannot be decoded: UnidentifiedImageError: not an image Pillow can identify"
  assert reasons[6].startswith("cannot be decoded: ")
  assert (errors[mask] == "").all()
  assert not np.concatenate([b["image"] for b in batches])[~mask].any()  # uint8 rows left blank
