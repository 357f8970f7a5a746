"""The pipelines' uint8 batches -> the model's inputs, inside the jitted step (finish='device').

train_loader(finish='device') feeds train.step; eval_loader(finish='device') feeds eval_model.make_forward.

The host then decodes and crops only: a batch crosses to the accelerator as uint8 photo [B,S,S,3] and uint8 class
map [B,S,S] (4x and 12x fewer bytes than float32 image and palette colours), and the host CPU, the usual limit of
an input pipeline on TPU hosts, saves the normalisation and palette lookup (~0.6 ms an image at 224 px here).

The values are those of the host path bit for bit: both are lookups in the same float32 tables
(augment.image_lut, augment.palette_table). Inputs that are already float32 (host-finished batches, synthetic
data, Predictor's photos) pass through unchanged, so one step serves every source.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from translocator_jax.data.pipeline import augment


class DeviceFinish:
  """finish(image, seg) -> (image float32 [..., S, S, 3], seg as config.model.seg_input asks), jittable.

  seg_input='palette' needs `palette` ([K <= 256, 3] uint8 colours) once a uint8 class map comes; a class past the
  palette would read as zeros, but the pipeline refuses such maps on the host (TrainBatches). Only uint8 maps are
  looked up: int32 class indices and float32 colours pass through.
  """

  def __init__(self, seg_input: str, palette: np.ndarray | None):
    if seg_input not in ("palette", "classes"):
      raise ValueError(f"seg_input must be 'palette' or 'classes', got {seg_input!r}")
    self.seg_input = seg_input
    # [3, 256] and [256, 3] float32, as numpy: jit embeds them as constants.
    self._image_table = np.ascontiguousarray(augment.image_lut()[:, 0, :].T)
    self._palette_table = None if palette is None else augment.palette_table(palette)[:, 0, :]

  def image(self, image: jax.Array) -> jax.Array:
    if image.dtype != jnp.uint8:
      return image
    # table[channel, value]: the channel index broadcasts over the last axis.
    return jnp.asarray(self._image_table)[jnp.arange(3), image.astype(jnp.int32)]

  def seg(self, seg: jax.Array) -> jax.Array:
    if seg.dtype != jnp.uint8:
      return seg
    if self.seg_input == "classes":
      return seg.astype(jnp.int32)
    if self._palette_table is None:
      raise ValueError("seg_input='palette' with uint8 class maps (a pipeline's finish='device') needs the "
                       "dataset's palette ([num_classes, 3] uint8) to finish them on device; none was given")
    return jnp.asarray(self._palette_table)[seg.astype(jnp.int32)]

  def __call__(self, image: jax.Array, seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.image(image), self.seg(seg)
