"""Deviceless ahead-of-time compiles for TPU topologies (libtpu's compile-only devices), on this CPU-only host.

The trainer's own step, for the tiny synthetic config: it fits a v5e chip, runs the collectives its mesh implies,
takes the TPU choices (no gather over image pixels, float32 gradient sums), lays two slices out over DCN, and the
refusals (too big, unknown topology) are one line each.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from translocator_jax import models
from translocator_jax.runtime import config_io, tpu
from translocator_jax.train import aot

SYNTHETIC = str(pathlib.Path(__file__).parents[1] / "train" / "synthetic_config.py")


def tiny(**overrides) -> ml_collections.ConfigDict:
  config = config_io.load_config(SYNTHETIC)
  config.data.batch_size = 32
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def replicated_step():
  """The tiny step at bfloat16 on v5e:2x2: (report, compiled HLO text)."""
  config = tiny(model__dtype="bfloat16")
  chip, devices = tpu.compile_only_devices("v5e:2x2")
  lowered, _ = aot.lower_train_step(config, devices)
  report = tpu.compile_report(lowered, chip, len(devices))
  return report, lowered.compile().as_text()


def test_tiny_step_fits_a_v5e_chip_and_all_reduces_its_gradients(replicated_step):
  report, hlo = replicated_step
  assert report["chip"] == "v5e" and report["devices"] == 4 and report["hbm_gib"] == 16
  assert report["fits"] and 0 < report["per_chip_gib"]["total"] < 1
  assert report["per_chip_gib"]["total"] == pytest.approx(
      sum(v for k, v in report["per_chip_gib"].items() if k != "total"))
  assert report["collectives"].get("all-reduce", 0) >= 1  # the gradients, summed over 'data'
  assert "all-gather" not in report["collectives"]  # parameters replicated: nothing to gather
  assert report["flops_per_chip"] > 0 and report["bytes_per_chip"] > 0 and report["roofline_step_s_estimate"] > 0
  assert not report["cost_counts_loops_once"]


def test_a_scanned_step_fits_and_says_its_cost_counts_one_layer():
  config = tiny(model__dtype="bfloat16", model__scan_layers=True, model__depth=3)
  report = aot.compile_train_step(config, "v5e:2x2")
  assert report["fits"] and report["cost_counts_loops_once"]
  assert "counts a loop's body once" in tpu.format_report(report, "train step")


def test_tpu_choices_are_taken_when_compiling_for_a_tpu_from_a_cpu_host(replicated_step):
  _, hlo = replicated_step
  # The uint8 photo [8 a chip, 16, 16, 3] and class map are finished without gathers.
  gathers = [line for line in hlo.splitlines() if re.search(r"= \S+ gather\(", line)]
  assert not [g for g in gathers if "u8[" in g or "16,16" in g], gathers
  # Gradients are summed across chips in float32, though the matmuls run in bfloat16.
  reduces = [line for line in hlo.splitlines() if re.search(r" all-reduce(-start)?\(", line)]
  assert reduces and not [r for r in reduces if "bf16[" in r.split("all-reduce")[0]], reduces


def test_fsdp_under_remat_gathers_each_weight_where_used_and_moves_no_activations():
  """Weights large enough to matter (2 x 4 layers of width 512, 25M parameters) against a small batch, rematted."""
  def config_of(fsdp):
    config = tiny(train__fsdp=fsdp, model__dtype="bfloat16", model__remat=True, model__width=512,
                  model__mlp_dim=2048, model__num_heads=4, model__depth=4)
    config.data.batch_size = 8
    return config

  sharded, replicated = (aot.compile_train_step(config_of(fsdp), "v5e:2x2") for fsdp in (True, False))
  assert sharded["mesh"] == {"data": 1, "fsdp": 4} and replicated["mesh"] == {"data": 4, "fsdp": 1}
  assert sharded["collectives"].get("all-gather", 0) >= 1
  assert "collective-permute" not in sharded["collectives"], sharded["collectives"]
  assert sharded["per_chip_gib"]["total"] < 0.6 * replicated["per_chip_gib"]["total"]
  # Gathered one layer at a time (and again for the backward pass), so far fewer than all the gathered weights
  # are live at once: gathering every weight at the top of the step kept them all (0.038 GiB more here).
  model, s = models.build_model(config_of(True).model, "tpu"), 16
  example = jnp.zeros((1, s, s, 3), jnp.float32)
  params = jax.eval_shape(lambda k: model.init({"params": k}, example, example)["params"], jax.random.key(0))
  gathered_bf16_gib = 2 * sum(leaf.size for leaf in jax.tree.leaves(params)) / 2 ** 30
  extra = sharded["per_chip_gib"]["temporaries"] - replicated["per_chip_gib"]["temporaries"]
  assert extra < 0.5 * gathered_bf16_gib, (extra, gathered_bf16_gib)
  # Each split weight is gathered twice: for the forward pass and for its rematerialised copy in the backward one.
  split = [leaf for leaf in jax.tree.leaves(params) if leaf.size >= config_of(True).train.fsdp_min_size]
  assert len(split) >= 32 and sharded["collectives"]["all-gather"] <= 2 * len(split), (len(split), sharded)


def test_collectives_are_counted_once_though_libtpu_copies_them_into_its_async_fusions():
  hlo = """
  %fused_computation.1 (param_0.1: bf16[512,512]) -> bf16[512,2048] {
    %all-gather.1 = bf16[512,2048]{1,0:T(8,128)(2,1)} all-gather(%param_0.1), channel_id=5, dimensions={1}, metadata={op_name="jit(step)/Dense_0/sharding_constraint"}
  }
  %async_collective_fusion.2 (param_0.2: bf16[512,512]) -> bf16[512,2048] {
    %all-gather.2 = bf16[512,2048]{1,0:T(8,128)(2,1)S(1)} all-gather(%param_0.2), channel_id=5, dimensions={1}, metadata={op_name="jit(step)/Dense_0/sharding_constraint"}
  }
  %all-gather.3 = bf16[512,2048]{1,0} all-gather(%p), channel_id=5, dimensions={1}, metadata={op_name="jit(step)/Dense_1/sharding_constraint"}
  %all-reduce.1 = (f32[512,1536]{1,0}, f32[512,1536]{1,0}) all-reduce(%a, %b), channel_id=1, to_apply=%add.22.clone, backend_config={}
  %all-reduce.2 = (f32[512,1536]{1,0}, f32[512,1536]{1,0}) all-reduce(%c, %d), channel_id=1, to_apply=%add.30.clone, backend_config={}
  %all-reduce.3 = f32[8]{0} all-reduce(%e), to_apply=%add
  %all-reduce.4 = f32[8]{0} all-reduce(%f), to_apply=%add
  %all-gather-start.9 = (bf16[4]{0}, bf16[16]{0}) all-gather-start(%g), channel_id=9, dimensions={0}, metadata={op_name="x"}
  %all-gather-done.9 = bf16[16]{0} all-gather-done(%all-gather-start.9)
"""
  assert tpu.collective_counts(hlo) == {"all-gather": 3, "all-reduce": 4}


def test_two_slices_put_data_parallelism_over_dcn():
  report = aot.compile_train_step(tiny(), "v5e:2x2", slices=2)
  assert report["devices"] == 8 and report["mesh"] == {"data": 8, "fsdp": 1} and report["fits"]


def test_a_step_too_big_for_the_chip_is_refused_in_one_line_with_what_would_help():
  config = tiny()
  # 50M classes: the head alone, with AdamW's two moments and its gradient, is 4 x 6 GiB a chip. (A large batch
  # fails too, but the compiler first spends minutes trying to rematerialise its way under the HBM.)
  config.model.heads.fine = 50_000_000
  config.loss.weights.fine = 1.0
  with pytest.raises(tpu.DoesNotFitError) as e:
    aot.compile_train_step(config, "v5e:2x2")
  line = str(e.value)
  assert "\n" not in line and "16 GiB HBM" in line and "needs" in line
  assert "--set model.dtype=bfloat16" in line and "--max-batch" in line and "train.fsdp=True" in line


@pytest.mark.parametrize("name", ["v5e:4", "v9:2x2", "v5e", "gpu:2x2"])
def test_unknown_topologies_list_the_known_forms(name):
  with pytest.raises(tpu.TopologyError, match=r"known forms: v4:2x2x2 \(v4\), v5e:4x4 \(v5e\)"):
    tpu.compile_only_devices(name)


def test_chip_facts_and_topology_names():
  assert tpu.parse_topology("v5p:2x2x1")[1] == "v5:2x2x1"  # libtpu's prefix for v5p
  assert tpu.parse_topology("v5:4x4x4")[0].hbm_gib == 95
  assert tpu.CHIPS["tpu7x"].hbm_gib_per_device == 96
  chip, devices = tpu.compile_only_devices("v4:2x2x2")
  assert chip.name == "v4" and len(devices) == 8  # one device a chip (megacore), as Cloud TPU v4 VMs run


def test_max_batch_finds_the_largest_batch_that_fits():
  calls = []

  def compile_at(config):  # a stand-in compile: fits up to 40 examples a device
    calls.append(config.data.batch_size)
    if config.data.batch_size > 4 * 40:
      raise tpu.DoesNotFitError("too big")
    return {"global_batch": config.data.batch_size}

  best, report = tpu.max_batch(tiny(), compile_at, devices=4)
  assert best == 160 and report == {"global_batch": 160}
  assert len(calls) <= 14


REPO = pathlib.Path(__file__).parents[2]


def _train_cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "translocator_jax.commands.train", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_the_train_command_compiles_for_a_pod_and_writes_its_report(tmp_path):
  out = tmp_path / "report.json"
  proc = _train_cli("--config", SYNTHETIC, "--compile-only", "--topology", "v5e:2x2", "--set", "data.batch_size=32",
                    "--set", "model.dtype=bfloat16", "--json", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  for key in ("topology", "slices", "devices", "mesh", "global_batch", "fits", "hbm_gib", "per_chip_gib",
              "compile_s", "collectives", "flops_per_chip", "bytes_per_chip"):
    assert key in report, key
  assert report["fits"] and report["global_batch"] == 32 and report["mesh"] == {"data": 4, "fsdp": 1}
  assert f"total {report['per_chip_gib']['total']:.2f} of 16 GiB: fits" in proc.stdout
  assert not list(tmp_path.glob("*/checkpoints")) and "Traceback" not in proc.stderr


def test_the_earth_demo_model_fits_a_colab_tpu():
  # The notebook's model (configs/earth_demo.py) on one v5e chip; the three geo heads take the sizes its
  # partitions give (a few hundred to a few thousand cells; 3298 / 7202 / 12893, MP-16's, bound them).
  proc = _train_cli("--config", str(REPO / "configs" / "earth_demo.py"), "--compile-only", "--topology", "v5e:1x1",
                    "--set", "model.heads.coarse=3298", "--set", "model.heads.middle=7202",
                    "--set", "model.heads.fine=12893")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ": fits," in proc.stdout and "1 chips (v5e" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (("--topology", "v5e:2x2", "--set", "model.heads.fine=50000000"), r"needs at least [\d.]+ GiB a chip; try"),
    (("--topology", "v9:2x2"), r"unknown TPU topology 'v9:2x2'; known forms"),
    (("--topology", "v5e:2x2", "--set", "model.heads.fine=0"), r"model.heads \['fine'\] have size 0"),
])
def test_the_train_command_refuses_in_one_line(args, message):
  proc = _train_cli("--config", SYNTHETIC, "--compile-only", "--set", "data.batch_size=32", *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("translocator-train: error: "), proc.stderr[-3000:]
  assert re.search(message, lines[0]), lines[0]


def test_the_eval_command_compiles_the_forward_and_the_gallery_search(tmp_path):
  out = tmp_path / "eval.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  proc = subprocess.run(
      [sys.executable, "-m", "translocator_jax.commands.evaluate", "--config", SYNTHETIC, "--compile-only",
       "--topology", "v5e:2x2", "--gallery-rows", "100000", "--batch-size", "16", "--json", str(out)],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  search = report["gallery_search"]
  assert report["fits"] and report["global_batch"] == 16 and report["gallery_rows"] == 100_000
  # The gallery (100k rows of 32 float32, padded to whole chunks) is split over the 4 chips.
  assert 100_000 * 32 * 4 / 4 <= search["per_chip_gib"]["arguments"] * 2 ** 30 < 1.2 * 100_000 * 32 * 4 / 4 + 2 ** 20
  assert search["collectives"].get("all-gather", 0) >= 1  # each chip's top-k, merged
  assert report["together_gib"] >= report["per_chip_gib"]["arguments"] + search["per_chip_gib"]["arguments"]
