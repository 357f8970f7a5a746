"""The pipelines' uint8 batches -> the model's inputs, inside the jitted step.

train_loader's batches feed train.step; eval_loader's feed infer.inference.make_forward.

The host then decodes and crops only: a batch crosses to the accelerator as uint8 photo [B,S,S,3] and uint8 class
map [B,S,S] (4x and 12x fewer bytes than float32 image and palette colours), and the host CPU, the usual limit of
an input pipeline on TPU hosts, saves the normalisation and palette lookup (benchmarks/README.md).

The values are those of augment.normalize / seg_to_model_input (the batch contract's definition) bit for bit: the
same float32 multiply-add (augment.normalize_affine) and the same palette colours (augment.palette_table). Inputs
that are already float32 (synthetic data, Predictor's photos) pass through unchanged, so one step serves every
source.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax import errors
from translocator_jax.data.pipeline import augment


class DeviceFinish:
  """finish(image, seg) -> (image float32 [..., S, S, 3], seg as config.model.seg_input asks), jittable.

  seg_input='palette' needs `palette` ([K <= 256, 3] uint8 colours) once a uint8 class map comes; a class past the
  palette would read as zeros, but the pipeline refuses such maps on the host (TrainBatches). Only uint8 maps are
  looked up: int32 class indices and float32 colours pass through.

  platform: the devices the step is compiled for. On CPU and GPU both are lookups in the host's float32 tables
  (augment.image_lut, augment.palette_table), the same bits as the host path. On a TPU, where a gather is the
  slowest operation (the two cost 863 of the 1,036 GB a chip moved in a B/16 step), the photo is one
  multiply-add per channel (augment.normalize's own formula; a fused multiply-add may round the last bit
  differently) and the colours a compare against each class with a masked sum, which XLA fuses into one pass over
  the map (the same bits: one term of the sum is non-zero).
  """

  def __init__(self, seg_input: str, palette: np.ndarray | None, platform: str = "cpu"):
    if seg_input not in ("palette", "classes"):
      raise errors.ConfigError(f"config.model.seg_input={seg_input!r}; expected 'palette' or 'classes'")
    self.seg_input = seg_input
    self.platform = platform
    self._scale, self._shift = augment.normalize_affine()  # [3] float32 each
    self._image_table = np.ascontiguousarray(augment.image_lut()[:, 0, :].T)  # [3, 256]
    # [256, 3] and its first K rows, float32 as numpy: jit embeds them as constants.
    self._full_palette_table = None if palette is None else augment.palette_table(palette)[:, 0, :]
    self._palette_table = None if palette is None else self._full_palette_table[:len(palette)]

  def image(self, image: jax.Array) -> jax.Array:
    if image.dtype != jnp.uint8:
      return image
    if self.platform == "tpu":
      return image.astype(jnp.float32) * jnp.asarray(self._scale) + jnp.asarray(self._shift)
    # table[channel, value]: the channel index broadcasts over the last axis.
    return jnp.asarray(self._image_table)[jnp.arange(3), image.astype(jnp.int32)]

  def seg(self, seg: jax.Array) -> jax.Array:
    if seg.dtype != jnp.uint8:
      return seg
    if self.seg_input == "classes":
      return seg.astype(jnp.int32)
    if self._palette_table is None:
      raise ValueError("seg_input='palette' with uint8 class maps (a pipeline's batches) needs the "
                       "dataset's palette ([num_classes, 3] uint8) to finish them on device; none was given")
    table = jnp.asarray(self._palette_table)
    classes = seg.astype(jnp.int32)
    if self.platform != "tpu":
      return jnp.asarray(self._full_palette_table)[classes]  # 256 rows: classes past the palette read as zeros
    hit = classes[..., None] == jnp.arange(len(table), dtype=jnp.int32)  # [..., K]: one True at most
    return jnp.stack([jnp.where(hit, table[:, c], 0.0).sum(axis=-1) for c in range(3)], axis=-1)

  def __call__(self, image: jax.Array, seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.image(image), self.seg(seg)
