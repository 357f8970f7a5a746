"""Evaluation compiled ahead of time for a TPU topology from any host: the benchmark forward and the gallery
search, so a benchmark runner knows the model and its gallery fit before renting a pod (runtime/tpu.py)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from translocator_jax import errors, models
from translocator_jax.data.pipeline import augment
from translocator_jax.infer import inference, search
from translocator_jax.runtime import config_schema
from translocator_jax.runtime import sharding as sharding_lib
from translocator_jax.runtime import tpu

MP16_ROWS = 4_723_695  # a gallery of every MP-16 training photo
SEARCH_K = 200         # refinement's largest neighbour count (infer/refine.py GRID)


def _one_example(config) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """A finished example's shapes (what model.init needs to know the parameters' shapes)."""
  s = config.model.image_size
  classes = config.model.seg_input == "classes"
  seg = jax.ShapeDtypeStruct((1, s, s), jnp.int32) if classes else jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  return jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), seg


def _abstract_params(config, model, mesh):
  image, seg = _one_example(config)
  shapes = jax.eval_shape(lambda k, i, s: model.init({"params": k}, i, s, train=False)["params"],
                          jax.random.key(0), image, seg)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      sharding_lib.state_shardings(shapes, mesh))


def lower_forward(config: ml_collections.ConfigDict, devices: list[Any], tta: str):
  """(lowered evaluation forward with embeddings, mesh): uint8 crops as the evaluation loader yields them."""
  config = config_schema.complete(config)
  mesh = sharding_lib.make_mesh(sharding_lib.inference_axes(config), devices)
  model = models.build_model(config.model, sharding_lib.platform(mesh))
  batch = config.eval.batch_size
  if batch % len(devices):
    raise errors.ConfigError(f"config.eval.batch_size={batch} must be a multiple of the {len(devices)} devices")
  s = config.model.image_size
  if tta not in augment.TTA_MODES:
    raise errors.ConfigError(f"config.eval.tta={tta!r}; expected one of {augment.TTA_MODES}")
  crops = {"center": (), "five_crop": (5,), "ten_crop": (10,)}[tta]
  rows = NamedSharding(mesh, P(sharding_lib.BATCH_AXES))
  image = jax.ShapeDtypeStruct((batch,) + crops + (s, s, 3), jnp.uint8, sharding=rows)
  seg = jax.ShapeDtypeStruct((batch,) + crops + (s, s), jnp.uint8, sharding=rows)
  palette = np.zeros((config.model.num_seg_classes, 3), np.uint8)
  forward = inference.make_forward(model, palette, embed=True)
  return forward.lower(_abstract_params(config, model, mesh), image, seg), mesh


def lower_search(config: ml_collections.ConfigDict, devices: list[Any], gallery_rows: int):
  """(lowered cell-biased top-k search of an eval batch of queries over `gallery_rows` float32 rows, mesh)."""
  config = config_schema.complete(config)
  mesh = sharding_lib.make_mesh(sharding_lib.inference_axes(config), devices)
  model = models.build_model(config.model, sharding_lib.platform(mesh))
  image, seg = _one_example(config)
  dim = jax.eval_shape(lambda k, i, s: model.apply(model.init({"params": k}, i, s), i, s, method=model.encode),
                       jax.random.key(0), image, seg).shape[-1]  # the pre-logits: what the gallery holds
  chunk, n_pad = search.gallery_layout(gallery_rows, mesh.shape[search.AXIS])
  queries = config.eval.batch_size
  fine = max(config.model.heads["fine"] if "fine" in config.model.heads else 0, 1)  # 0: sized by the data
  struct = lambda shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
  args = (struct((queries, dim), jnp.float32, P()), struct((n_pad, dim), jnp.float32, P(search.AXIS, None)),
          struct((n_pad,), jnp.int32, P(search.AXIS)), struct((queries, fine), jnp.float32, P()),
          struct((), jnp.float32, P()))
  lowered = search._search.lower(*args, k=min(SEARCH_K, gallery_rows), chunk=chunk, mesh=mesh,  # pylint: disable=protected-access
                                 biased=True, approximate=sharding_lib.platform(mesh) == "tpu")
  return lowered, mesh


def compile_eval(config: ml_collections.ConfigDict, topology: str, slices: int = 1, *, tta: str = "center",
                 gallery_rows: int = MP16_ROWS) -> dict[str, Any]:
  """Both programs compiled for the topology: the forward's report, with the search's under 'gallery_search'
  and 'fits' true only when the parameters, the gallery and the larger program's working memory fit together."""
  config = config_schema.complete(config)
  batch = dict(global_batch=config.eval.batch_size, batch_setting="--batch-size")
  forward = tpu.compile_for_topology(lambda d: lower_forward(config, d, tta), config, topology, slices,
                                     what="evaluation forward", **batch)
  searched = tpu.compile_for_topology(lambda d: lower_search(config, d, gallery_rows), config, topology, slices,
                                      what=f"gallery search over {gallery_rows} rows", **batch)
  a, b = forward["per_chip_gib"], searched["per_chip_gib"]
  together = a["arguments"] + b["arguments"] + max(a["temporaries"] + a["outputs"], b["temporaries"] + b["outputs"])
  together += a["code"] + b["code"]
  forward["gallery_search"] = searched
  forward["gallery_rows"] = int(gallery_rows)
  forward["together_gib"] = together
  forward["fits"] = forward["fits"] and searched["fits"] and together <= forward["hbm_gib"]
  if not forward["fits"]:
    raise tpu.DoesNotFitError(
        f"{topology} x{slices}: the evaluation forward and a gallery of {gallery_rows} rows need {together:.1f} "
        f"GiB a chip together, more than its {forward['hbm_gib']:g} GiB; try more chips (the gallery is split "
        "over them), a smaller --batch-size, or --set model.dtype=bfloat16")
  return forward
