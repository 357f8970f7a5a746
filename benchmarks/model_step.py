"""Speed of the TransLocator step on this machine, against eager PyTorch and the float32 matmul rate.

  .venv/bin/python benchmarks/model_step.py --variant S/16 --image-size 224 --batch 8 --mode train
  .venv/bin/python benchmarks/model_step.py --variant S/16 --mode infer

Prints one JSON line. Rounds interleave (JAX steps, PyTorch steps, a matmul-rate probe) in one process, so a
busy shared CPU slows all three alike; ratios are medians over rounds of per-round ratios.
  images_per_s          ours, median over rounds
  torch_images_per_s    the same two-stream model in eager PyTorch (benchmarks/torch_reference.py)
  speed_vs_torch        median of per-round (torch step time / our step time); > 1 means we are faster
  gflop_per_s           XLA cost-analysis FLOPs of our step / our step time
  matmul_gflop_per_s    float32 matmul rate: best of a jitted JAX and a numpy 2048^3 matmul, per round
  fraction_of_matmul    median of per-round gflop_per_s / matmul_gflop_per_s
  loadavg_start/_end    1-minute load average: other work on a shared CPU makes every figure noisier
  sys_s_per_step, minor_faults_per_step   kernel time and page faults a step (fresh host buffers show up here)
  model_gflop_per_step  the model's matmul FLOPs counted from its shapes (models/flops.py); XLA's cost analysis
                        leaves out the cuBLAS / cuDNN calls on a GPU, so accelerator figures use this count
  mfu                   on an accelerator: model FLOPs/s over the chips' peak (--peak-tflops or the PEAK_TFLOPS table)
GPU (B/16 bfloat16 training): model_step.py --variant B/16 --dtype bfloat16 --batch 256 --no-torch
train mode: forward of both streams, summed cross-entropy of all heads, backward, SGD momentum (jitted, donated).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

# The flag helper must run before JAX's CPU backend starts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from translocator_jax.runtime import perf  # pylint: disable=g-import-not-at-top


# Dense matmul peaks (TFLOP/s per chip) by jax device_kind, bfloat16 / float32 (float32: TF32 off on GPUs), for MFU.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": (989.0, 67.0), "NVIDIA H200": (989.0, 67.0), "NVIDIA A100-SXM4-80GB": (312.0, 19.5),
    "NVIDIA A100-SXM4-40GB": (312.0, 19.5), "TPU v4": (275.0, 275.0 / 4), "TPU v5 lite": (197.0, 197.0 / 4),
    "TPU v5e": (197.0, 197.0 / 4),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="S/16")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--mode", choices=("train", "infer"), default="train")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="steps per round and framework")
  p.add_argument("--heads", default="coarse=3298,middle=7202,fine=12893,scene=3")
  p.add_argument("--no-flags", action="store_true", help="do not set the CPU XLA flags (to measure them)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-keep-memory", action="store_true",
                 help="glibc malloc defaults instead of perf.keep_freed_host_memory (to measure it)")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"),
                 help="config.model.attention ('auto': cuDNN fused attention on a GPU in bfloat16, else XLA)")
  p.add_argument("--depth", type=int, default=None, help="fewer layers (same per-layer shapes) for quick sweeps")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="the accelerator's dense peak for --dtype, for `mfu` (default: PEAK_TFLOPS by device kind)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if not args.no_flags:
    perf.cpu_performance_flags()
  keep_memory = False if args.no_keep_memory else perf.keep_freed_host_memory()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from translocator_jax import models  # pylint: disable=g-import-not-at-top
  from translocator_jax.models import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from translocator_jax.runtime import config_schema  # pylint: disable=g-import-not-at-top

  heads = {k: int(v) for k, v in (kv.split("=") for kv in args.heads.split(","))}
  cfg = config_schema.complete_section("model", dict(
      variant=args.variant, image_size=args.image_size, heads=heads, fusion="cls_sum", dtype=args.dtype,
      remat=args.remat, depth=args.depth, attention=args.attention))
  model = models.build_model(cfg)
  b, s = args.batch, args.image_size
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(b, s, s, 3)).astype(np.float32))
  seg = jnp.asarray(rng.normal(size=(b, s, s, 3)).astype(np.float32))
  labels = {k: jnp.asarray(rng.integers(0, n, size=b).astype(np.int32)) for k, n in heads.items()}
  params = jax.jit(model.init)(jax.random.key(0), image, seg)["params"]
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(p, image, seg, labels):
    logits = model.apply({"params": p}, image, seg, train=True)
    return sum(optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean() for k in logits)

  if args.mode == "train":
    def train_step(p, o, image, seg, labels):
      loss, grads = jax.value_and_grad(loss_fn)(p, image, seg, labels)
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o, loss
    step = jax.jit(train_step, donate_argnums=(0, 1))
    compiled = step.lower(params, opt_state, image, seg, labels).compile()
    state = [params, opt_state]

    def run_ours():
      state[0], state[1], loss = compiled(state[0], state[1], image, seg, labels)
      return loss
  else:
    infer = jax.jit(lambda p, image, seg: model.apply({"params": p}, image, seg))
    compiled = infer.lower(params, image, seg).compile()

    def run_ours():
      return compiled(params, image, seg)

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"])
  kw = models.model_kwargs(cfg)
  model_flops = b * flops_lib.matmul_flops(kw, s, train=args.mode == "train")

  run_torch = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    tmodel = torch_reference.TorchTransLocator(
        heads, kw["width"], kw["depth"], kw["mlp_dim"], kw["num_heads"], kw["patch_size"], s)
    timage = torch.from_numpy(np.asarray(image).transpose(0, 3, 1, 2).copy())
    tseg = torch.from_numpy(np.asarray(seg).transpose(0, 3, 1, 2).copy())
    tlabels = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in labels.items()}
    if args.mode == "train":
      tmodel.train()
      tstep = torch_reference.make_train_step(tmodel)
      run_torch = lambda: tstep(timage, tseg, tlabels)
    else:
      tmodel.eval()

      def run_torch():
        with torch.inference_mode():
          return tmodel(timage, tseg)

  n = 2048
  a_np = rng.normal(size=(n, n)).astype(np.float32)
  a_jx = jnp.asarray(a_np)
  mm = jax.jit(lambda x: x @ x)

  def matmul_rate():
    # Median (not best) of a few runs, like the step times, so a busy CPU weighs on both alike.
    rates = []
    for fn in (lambda: mm(a_jx).block_until_ready(), lambda: a_np @ a_np):
      fn()
      times = []
      for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
      rates.append(2 * n ** 3 / statistics.median(times) / 1e9)
    return max(rates)

  faults = {}

  def timed(fn, block):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for _ in range(args.steps):
      out = fn()
    block(out)
    seconds = (time.perf_counter() - t) / args.steps
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # Kernel time and page faults per step: fresh host buffers faulted in every step show up here.
    faults.setdefault(fn, []).append(((r1.ru_stime - r0.ru_stime) / args.steps,
                                      (r1.ru_minflt - r0.ru_minflt) / args.steps))
    return seconds

  jax_block = lambda out: jax.block_until_ready(out)
  load_start = os.getloadavg()[0]
  timed(run_ours, jax_block)  # warm-up
  if run_torch:
    timed(run_torch, lambda out: None)
  ours, theirs, rates = [], [], []
  for _ in range(args.rounds):
    ours.append(timed(run_ours, jax_block))
    if run_torch:
      theirs.append(timed(run_torch, lambda out: None))
    rates.append(matmul_rate())
  t_ours = statistics.median(ours)
  load_end = os.getloadavg()[0]
  result = dict(
      variant=args.variant, image_size=s, batch=b, mode=args.mode, dtype=args.dtype, attention=args.attention,
      xla_flags=os.environ.get("XLA_FLAGS", ""), step_s=round(t_ours, 4), images_per_s=round(b / t_ours, 3),
      gflop_per_step=round(flops / 1e9, 2), gflop_per_s=round(flops / t_ours / 1e9, 1),
      model_gflop_per_step=round(model_flops / 1e9, 2), model_gflop_per_s=round(model_flops / t_ours / 1e9, 1),
      matmul_gflop_per_s=round(statistics.median(rates), 1),
      fraction_of_matmul=round(statistics.median(flops / o / 1e9 / r for o, r in zip(ours, rates)), 3),
      rounds=args.rounds, steps_per_round=args.steps, depth=models.model_kwargs(cfg)["depth"],
      loadavg_start=round(load_start, 2), loadavg_end=round(load_end, 2), cpus=os.cpu_count(),
      per_round=dict(step_s=[round(x, 4) for x in ours], torch_step_s=[round(x, 4) for x in theirs],
                     matmul_gflop_per_s=[round(x, 1) for x in rates]),
      sys_s_per_step=round(statistics.median(f[0] for f in faults[run_ours][1:]), 3),
      minor_faults_per_step=int(statistics.median(f[1] for f in faults[run_ours][1:])),
      host_memory_kept=keep_memory)
  kind = jax.devices()[0].device_kind
  peak = args.peak_tflops or {k: v[0 if args.dtype == "bfloat16" else 1] for k, v in PEAK_TFLOPS.items()}.get(kind)
  result.update(device_kind=kind, device_count=jax.device_count())
  if peak:  # model FLOPs utilisation on an accelerator (XLA's FLOP count of the step over the chips' peak)
    result.update(peak_tflops=peak, mfu=round(model_flops / t_ours / 1e12 / (peak * jax.device_count()), 4))
  if run_torch:
    t_theirs = statistics.median(theirs)
    result.update(torch_sys_s_per_step=round(statistics.median(f[0] for f in faults[run_torch][1:]), 3),
                  torch_minor_faults_per_step=int(statistics.median(f[1] for f in faults[run_torch][1:])))
    result.update(torch_step_s=round(t_theirs, 4), torch_images_per_s=round(b / t_theirs, 3),
                  speed_vs_torch=round(statistics.median(t / o for o, t in zip(ours, theirs)), 3),
                  torch_threads=torch.get_num_threads())
  print(json.dumps(result))


if __name__ == "__main__":
  main()
