"""TPU chip facts and ahead-of-time compilation for any TPU topology from any host (deviceless AOT).

libtpu (the `tpu` extra) makes compile-only devices of a named topology on a CPU-only machine
(`jax.experimental.topologies.get_topology_desc`); a step lowered and compiled for them reports what one chip
would hold (`memory_analysis`) and do (`cost_analysis`), and which collectives it runs, before a pod is rented.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import re
import time
from typing import Any, Callable

import jax

from translocator_jax import errors

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: what a chip holds and does (Cloud TPU's published figures)."""
  name: str                 # the name people use: v5e, v5p, ...
  prefix: str               # libtpu's topology prefix (v5p is 'v5')
  hbm_gib: float            # HBM a chip
  bf16_tflops: float        # peak bf16 dense matmul, TFLOP/s a chip
  hbm_gbps: float           # HBM bandwidth, GB/s a chip
  devices_per_chip: int = 1  # JAX devices a chip (TPU7x: two)
  example: str = ""

  @property
  def hbm_gib_per_device(self) -> float:
    return self.hbm_gib / self.devices_per_chip


CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", "v4", 32, 275, 1200, example="v4:2x2x2"),
    Chip("v5e", "v5e", 16, 197, 819, example="v5e:4x4"),
    Chip("v5p", "v5", 95, 459, 2765, example="v5:2x2x1"),
    Chip("v6e", "v6e", 32, 918, 1640, example="v6e:4x4"),
    Chip("tpu7x", "tpu7x", 192, 2307, 7380, devices_per_chip=2, example="tpu7x:2x2x1"),
)}
_BY_PREFIX = {c.prefix: c for c in CHIPS.values()} | {"v5p": CHIPS["v5p"]}
_SHAPE = re.compile(r"^\d+(x\d+){1,2}$")

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# An instruction line `%name = TYPE op(...)`: the op follows the result type, after a space.
_COLLECTIVE_OP = re.compile(rf"^\s*(?:ROOT )?%\S+ = (.*?) ({'|'.join(COLLECTIVES)})(?:-start)?\(")
_CHANNEL = re.compile(r"channel_id=(\d+)")
_LAYOUT = re.compile(r"\{[^{}]*\}")
_SOURCE = re.compile(r'op_name="([^"]*)"|to_apply=(%\S+?),')


class DoesNotFitError(errors.ConfigError):
  """A program needs more HBM than a chip has; the message says by how much and what would help."""


class TopologyError(errors.ConfigError):
  """An unknown topology name, or libtpu missing; the message lists what works."""


def known_forms() -> str:
  return ", ".join(f"{c.example} ({c.name})" for c in CHIPS.values())


def parse_topology(topology: str) -> tuple[Chip, str]:
  """'v5e:4x4' -> (Chip v5e, libtpu's name for it); 'v5p:2x2x1' is accepted for libtpu's 'v5:2x2x1'."""
  prefix, _, shape = str(topology).partition(":")
  chip = _BY_PREFIX.get(prefix.lower())
  if chip is None or not _SHAPE.match(shape):
    raise TopologyError(f"unknown TPU topology {topology!r}; known forms: {known_forms()} "
                        f"(chips per axis, e.g. v5e:16x16 for a v5e-256)")
  return chip, f"{chip.prefix}:{shape}"


def require_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise TopologyError("compiling for a TPU needs libtpu, which this environment lacks: "
                        "pip install -e '.[tpu]' (or the dev extra)")


def compile_only_devices(topology: str, slices: int = 1) -> tuple[Chip, list[Any]]:
  """(chip, compile-only devices of `slices` copies of the named topology); no TPU needed."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top  (starts libtpu)
  chip, name = parse_topology(topology)
  if int(slices) < 1:
    raise TopologyError(f"--slices {slices}: a pod has at least one slice")
  require_libtpu()
  kwargs: dict[str, Any] = {"chip_config_name": "megacore"} if chip.name == "v4" else {}  # as v4 VMs run
  dims = [int(d) for d in name.partition(":")[2].split("x")] + [1]
  if dims[0] < 2 or dims[1] < 2:  # fewer chips than one host's 2x2 (a Colab TPU's v5e:1x1, v5e:2x1)
    kwargs["chips_per_host_bounds"] = [min(dims[0], 2), min(dims[1], 2), 1]
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu", num_slices=int(slices), **kwargs)
  except jax.errors.JaxRuntimeError as e:
    raise TopologyError(f"libtpu cannot make topology {topology!r} ({str(e).splitlines()[0]}); "
                        f"known forms: {known_forms()}") from e
  return chip, list(desc.devices)


def collective_counts(hlo_text: str) -> dict[str, int]:
  """How many of each collective the compiled HLO runs, each counted once (async pairs by their start).

  libtpu splits one collective into an async start and continuation fusions, each holding a copy of it (the same
  channel, shape and source op): the copies are one collective. Counting HLO lines gave 2-3x as many.
  """
  seen: set[tuple[str, ...]] = set()
  counts: dict[str, int] = {}
  for n, line in enumerate(hlo_text.splitlines()):
    found = _COLLECTIVE_OP.search(line)
    if not found:
      continue
    out_type, kind = found.groups()
    out_type = _LAYOUT.sub("", out_type)  # copies differ in layout and memory space only
    channel, source = _CHANNEL.search(line), _SOURCE.search(line)
    key = ((kind, channel.group(1), out_type, source.group(0)) if channel and source
           else (kind, str(n)))  # nothing to tell copies by: each line its own
    if key not in seen:
      seen.add(key)
      counts[kind] = counts.get(kind, 0) + 1
  return counts


def memory_per_device(compiled) -> dict[str, float]:
  """GiB a device holds while the program runs: arguments, outputs (less what aliases the donated arguments),
  temporaries, generated code, and their total."""
  m = compiled.memory_analysis()
  parts = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes - m.alias_size_in_bytes,
           "temporaries": m.temp_size_in_bytes, "code": m.generated_code_size_in_bytes}
  out = {k: v / GIB for k, v in parts.items()}
  out["total"] = sum(parts.values()) / GIB
  return out


def compile_report(lowered, chip: Chip, devices: int) -> dict[str, Any]:
  """Compiles `lowered` and reads what one device needs and does; raises CompileOOM when it cannot fit."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      raise CompileOOM(str(e)) from e
    raise
  seconds = time.perf_counter() - start
  memory = memory_per_device(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops, bytes_accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  hlo = compiled.as_text()
  per_device_tflops = chip.bf16_tflops / chip.devices_per_chip
  per_device_gbps = chip.hbm_gbps / chip.devices_per_chip
  hbm = chip.hbm_gib_per_device
  return {
      "chip": chip.name, "devices": devices, "hbm_gib": hbm, "per_chip_gib": memory,
      "fits": memory["total"] <= hbm, "headroom_gib": hbm - memory["total"], "compile_s": seconds,
      "collectives": collective_counts(hlo),
      "flops_per_chip": flops, "bytes_per_chip": bytes_accessed,
      # XLA's cost analysis counts a while loop's body once (a scanned model's layers: one layer's FLOPs).
      "cost_counts_loops_once": bool(re.search(r" while\(", hlo)),
      # A lower bound from the chip's peaks, not a measurement: the compiler's own estimate is unusable.
      "roofline_step_s_estimate": max(flops / (per_device_tflops * 1e12), bytes_accessed / (per_device_gbps * 1e9)),
  }


class CompileOOM(RuntimeError):
  """The compiler refused the program: it does not fit a device's HBM (the message has the bytes)."""

  def needed_gib(self) -> float | None:
    """The GiB the compiler said it needs, when its message says ('... temporaries (26.08G) exceeds available
    HBM (15.75G)', or 'Used 26.08G of 15.75G hbm')."""
    found = (re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM", str(self))
             or re.search(r"Used ([\d.]+)([KMGT])i?B? of [\d.]+[KMGT]i?B? hbm", str(self)))
    if not found:
      return None
    return float(found.group(1)) * {"K": 2 ** -20, "M": 2 ** -10, "G": 1.0, "T": 1024.0}[found.group(2)]


def compile_for_topology(lower: Callable[[list[Any]], tuple[Any, Any]], config, topology: str, slices: int = 1,
                         what: str = "train step", global_batch: int | None = None,
                         batch_setting: str = "data.batch_size") -> dict[str, Any]:
  """lower(devices) -> (lowered, mesh), compiled for the topology; the report of runtime.tpu plus the layout.
  Raises DoesNotFitError when the compiled program exceeds a device's HBM (or the compiler refuses it).
  global_batch: the program's batch (default config.data.batch_size), set by `batch_setting`."""
  chip, devices = compile_only_devices(topology, slices)
  lowered, mesh = lower(devices)
  head = {"topology": topology, "slices": int(slices), "devices": len(devices), "chips": len(devices) //
          chip.devices_per_chip, "mesh": {k: int(v) for k, v in mesh.shape.items()},
          "global_batch": int(config.data.batch_size if global_batch is None else global_batch),
          "batch_setting": batch_setting}
  try:
    report = {**head, **compile_report(lowered, chip, len(devices))}
  except CompileOOM as e:
    needed = e.needed_gib()
    raise DoesNotFitError(_does_not_fit_line(config, head, chip, needed, what)) from e
  if not report["fits"]:
    raise DoesNotFitError(_does_not_fit_line(config, head, chip, report["per_chip_gib"]["total"], what))
  return report


def _does_not_fit_line(config, head: dict[str, Any], chip: Chip, needed_gib: float | None, what: str) -> str:
  need = (f"needs at least {needed_gib:.1f} GiB a chip" if needed_gib
          else "does not fit (the compiler ran out of HBM)")
  hints = []
  if config.model.dtype != "bfloat16":
    hints.append("--set model.dtype=bfloat16")
  per_device = head["global_batch"] // head["devices"]
  if per_device > 1:
    hints.append(f"a smaller per-chip batch ({head['batch_setting']}={head['global_batch']} is {per_device} a "
                 "chip; --max-batch finds the largest that fits)")
  if head["mesh"].get("fsdp", 1) == 1:
    hints.append("--set train.fsdp=True")
  if not config.model.remat:
    hints.append("--set model.remat=True")
  elif config.model.remat_policy != "nothing_saveable":
    hints.append("--set model.remat_policy=nothing_saveable (recompute all but the layer inputs)")
  return (f"{head['topology']} x{head['slices']} ({chip.name}, {chip.hbm_gib_per_device:g} GiB HBM a chip): the "
          f"{what} at global batch {head['global_batch']} {need}; try {', '.join(hints) or 'more chips'}")


def max_batch(config, compile_at: Callable[[Any], dict[str, Any]],
              devices: int, limit: int = 2 ** 20) -> tuple[int, dict[str, Any] | None]:
  """The largest global batch (a multiple of `devices`) whose compile fits, by doubling then bisecting per-device
  batch sizes (as MaxText's estimator does); (0, None) when not even one example a device fits."""

  def fits(per_device: int) -> dict[str, Any] | None:
    trial = copy.deepcopy(config)
    trial.data.batch_size = per_device * devices
    try:
      return compile_at(trial)
    except DoesNotFitError:
      return None

  best, best_report, lo = 0, None, 1
  hi = None
  while hi is None and lo * devices <= limit:  # double until it does not fit
    report = fits(lo)
    if report is None:
      hi = lo
    else:
      best, best_report, lo = lo, report, lo * 2
  if hi is None:
    return best * devices, best_report
  lo = best + 1
  while lo < hi:  # bisect between the last fit and the first miss
    mid = (lo + hi) // 2
    report = fits(mid)
    if report is None:
      hi = mid
    else:
      best, best_report, lo = mid, report, mid + 1
  return best * devices, best_report


def add_compile_args(parser) -> None:
  """--compile-only and its options, the same for every command that can compile for a pod."""
  g = parser.add_argument_group("compile for a TPU topology (deviceless: no TPU, no data, nothing written)")
  g.add_argument("--compile-only", action="store_true",
                 help="compile for --topology and print what a chip needs and does; train or evaluate nothing")
  g.add_argument("--topology", help=f"TPU topology, chips per axis: {known_forms()}")
  g.add_argument("--slices", type=int, default=1, help="slices of that topology joined over DCN (default 1)")
  g.add_argument("--json", dest="json_path", metavar="PATH", help="also write the report as one JSON object")
  g.add_argument("--max-batch", action="store_true",
                 help="search the largest global batch that fits (compiles several times)")


def check_compile_args(args, parser) -> None:
  if args.compile_only and not args.topology:
    parser.error("--compile-only needs --topology, e.g. --topology v5e:16x16")
  if not args.compile_only and (args.topology or args.max_batch or args.json_path):
    parser.error("--topology, --max-batch and --json go with --compile-only")


def format_report(report: dict[str, Any], what: str) -> str:
  """The report as a short table for a terminal."""
  chip = CHIPS[report["chip"]]
  mem = report["per_chip_gib"]
  per_device = report["global_batch"] // report["devices"]
  verdict = (f"fits, {report['headroom_gib']:.2f} GiB headroom" if report["fits"]
             else f"does NOT fit, {-report['headroom_gib']:.2f} GiB over")
  collectives = ", ".join(f"{k} {v}" for k, v in sorted(report["collectives"].items())) or "none"
  lines = [
      f"{what} for {report['topology']} x{report['slices']} slice(s): {report['chips']} chips ({chip.name}, "
      f"{report['hbm_gib']:g} GiB HBM and {chip.bf16_tflops / chip.devices_per_chip:g} TFLOP/s bf16 a device), "
      f"mesh {' '.join(f'{k}={v}' for k, v in report['mesh'].items())}",
      f"  batch        {report['global_batch']} global, {per_device} a device",
      "  per device   " + "  ".join(f"{k} {mem[k]:.2f}" for k in ("arguments", "outputs", "temporaries", "code"))
      + f"  total {mem['total']:.2f} of {report['hbm_gib']:g} GiB: {verdict}",
      f"  compile      {report['compile_s']:.1f} s",
      f"  collectives  {collectives}",
      f"  work         {report['flops_per_chip'] / 1e12:.2f} TFLOP and {report['bytes_per_chip'] / 1e9:.1f} GB of "
      "HBM traffic a device",
      f"  step time    >= {report['roofline_step_s_estimate'] * 1e3:.1f} ms (an estimate from the chip's peak "
      "FLOP/s and HBM bandwidth, not a measurement)",
  ]
  if report.get("cost_counts_loops_once"):
    lines.append("  note         the program loops (scanned layers): the compiler counts a loop's body once, so "
                 "work and step time above are too low")
  if "max_global_batch" in report:
    lines.append(f"  max batch    {report['max_global_batch']} global (the largest that fits)")
  return "\n".join(lines)


def run_compile_only(args, config, compile_at: Callable[[Any], dict[str, Any]], what: str) -> int:
  """The --compile-only command: compile (or search --max-batch), print the table, write --json; exit 0."""
  if args.max_batch:
    _, devices = compile_only_devices(args.topology, args.slices)
    best, report = max_batch(config, compile_at, len(devices))
    if report is None:
      raise DoesNotFitError(f"{args.topology} x{args.slices}: the {what} does not fit even at one example a "
                            "device; try --set model.dtype=bfloat16, --set train.fsdp=True, --set model.remat=True")
    report = {**report, "max_global_batch": best}
  else:
    report = compile_at(config)
  print(format_report(report, what), flush=True)
  if args.json_path:
    with open(args.json_path, "w") as f:
      json.dump(report, f, indent=1)
  return 0
