"""The train step compiled for Cloud TPU topologies from this CPU-only host (deviceless AOT, libtpu).

  python benchmarks/tpu_compile.py                       # the table of docs/tpu.md (about an hour on 2 cores)
  python benchmarks/tpu_compile.py --cases b16_bf16@v5e:4x4 l16_bf16_fsdp@v5e:4x4
  python benchmarks/tpu_compile.py --list

Each case is NAME@TOPOLOGY[/SLICES]; NAME picks a config (configs/translocator_b16_mp16.py with --set overrides,
see CASES) and `+max` appended to it also searches the largest global batch that fits. Prints one JSON object
per case as it finishes (the report of runtime/tpu.py: per-chip memory, fits, compile seconds, collectives,
FLOPs and bytes a chip, a roofline step-time estimate), then a JSON list of them all, with the jax and libtpu
versions. A case that does not fit reports fits=false and the compiler's one line.
"""
import argparse
import copy
import importlib.metadata
import json
import sys

from translocator_jax.runtime import perf

perf.configure_cpu_runtime()

from translocator_jax.runtime import config_io, tpu  # pylint: disable=wrong-import-position
from translocator_jax.train import aot  # pylint: disable=wrong-import-position

PAPER = "configs/translocator_b16_mp16.py"
BF16 = ("model.dtype=bfloat16",)
NO_REMAT = ("model.remat=False",)
L16 = ("model.variant=L/16",)
SCAN = ("model.scan_layers=True",)
PER_LAYER = ("model.scan_layers=False",)  # the paper config scans; a case without _scan traces each layer
FSDP = ("train.fsdp=True",)
CASES = {  # the paper config rematerialises selectively (model.remat_policy) unless NO_REMAT
    "b16_f32": PER_LAYER,
    "b16_bf16": BF16 + PER_LAYER,
    "b16_bf16_noremat": BF16 + NO_REMAT + PER_LAYER,
    "b16_bf16_scan": BF16 + SCAN,
    "b16_bf16_fsdp": BF16 + FSDP + PER_LAYER,
    "b16_bf16_noremat_fsdp": BF16 + NO_REMAT + FSDP + PER_LAYER,
    "l16_bf16_noremat": BF16 + L16 + NO_REMAT + PER_LAYER,
    "l16_bf16": BF16 + L16 + PER_LAYER,
    "l16_bf16_scan": BF16 + L16 + SCAN,
    "l16_bf16_fsdp": BF16 + L16 + FSDP + PER_LAYER,
    "l16_bf16_fsdp_scan": BF16 + L16 + FSDP + SCAN,
    "l16_bf16_fsdp_fullremat": BF16 + L16 + FSDP + ("model.remat_policy=nothing_saveable",) + PER_LAYER,
    "l16_bf16_fullremat": BF16 + L16 + ("model.remat_policy=nothing_saveable",) + PER_LAYER,
}
# The table of docs/tpu.md: the paper's B/16 on the pods people rent, at its batch (1024) and the largest that fits,
# L/16 with and without FSDP, and compile time unscanned against scanned.
TABLE_CASES = (
    "b16_bf16_noremat@v5e:4x4", "b16_bf16@v5e:4x4", "b16_bf16_scan@v5e:4x4", "b16_bf16_fsdp@v5e:4x4",
    "b16_bf16_noremat_fsdp@v5e:4x4", "b16_f32@v5e:4x4", "l16_bf16_noremat@v5e:4x4", "l16_bf16_fsdp@v5e:4x4",
    "l16_bf16_fsdp_scan@v5e:4x4", "l16_bf16_fullremat@v5e:4x4", "l16_bf16_fsdp_fullremat@v5e:4x4",
    "b16_bf16@v4:2x2x4", "b16_bf16@v5e:8x8", "b16_bf16@v5e:16x16",
    "b16_bf16@v5:4x4x4", "b16_bf16@v6e:8x8", "b16_bf16@v5e:16x16/2",
    "b16_bf16+max@v5e:4x4",
)


def parse_case(case: str) -> tuple[str, bool, str, int]:
  name, _, where = case.partition("@")
  search = name.endswith("+max")
  name = name.removesuffix("+max")
  if name not in CASES or not where:
    raise SystemExit(f"tpu_compile.py: unknown case {case!r}; cases are NAME[+max]@TOPOLOGY[/SLICES] with NAME in "
                     f"{sorted(CASES)}")
  topology, _, slices = where.partition("/")
  return name, search, topology, int(slices or 1)


def run_case(case: str) -> dict:
  name, search, topology, slices = parse_case(case)
  config = config_io.apply_overrides(config_io.load_config(PAPER), list(CASES[name]))
  compile_at = lambda c: aot.compile_train_step(c, topology, slices)
  out = {"case": case, "config": PAPER, "overrides": list(CASES[name])}
  try:
    report = compile_at(copy.deepcopy(config))
    out.update(report)
  except tpu.DoesNotFitError as e:
    out.update({"topology": topology, "slices": slices, "global_batch": int(config.data.batch_size), "fits": False,
                "error": str(e)})
  if search:
    _, devices = tpu.compile_only_devices(topology, slices)
    best, best_report = tpu.max_batch(config, compile_at, len(devices))
    out["max_global_batch"] = best
    out["at_max"] = {k: best_report[k] for k in ("per_chip_gib", "compile_s", "roofline_step_s_estimate")} \
        if best_report else None
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", nargs="*", default=list(TABLE_CASES))
  p.add_argument("--list", action="store_true")
  args = p.parse_args()
  if args.list:
    print("\n".join(f"{k}: {' '.join(v) or '(paper config)'}" for k, v in CASES.items()))
    return
  versions = {pkg: importlib.metadata.version(pkg) for pkg in ("jax", "jaxlib", "libtpu")}
  results = []
  for case in args.cases:
    result = {**run_case(case), "versions": versions}
    print(json.dumps(result), flush=True)
    results.append(result)
  json.dump(results, sys.stdout)
  print()


if __name__ == "__main__":
  main()
