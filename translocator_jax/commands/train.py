"""`translocator-train --config configs/X.py[:arg] --workdir DIR [--set key=value ...]`.

Restarting with the same workdir resumes from its newest readable checkpoint. On a multi-host TPU pod the same
command runs on every host with TRANSLOCATOR_DISTRIBUTED=auto (jax.distributed.initialize() auto-detects the
pod); each host reads its own shard of the data. Explicit multi-process runs (e.g. CPU, gloo) set
JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID.

Faults, in one line each: a checkpoint that cannot be written (a full disk) stops the run (exit status 1) naming
the checkpoint that is intact, and rerunning the same command resumes from it; a workdir another trainer uses is
refused (WORKDIR/.lock names its host and pid; exit status 2). --verbose adds the details (the checkpoint
library's own logs, tracebacks); TRANSLOCATOR_TRACEBACK=1 raises the error itself.

Preemption (a Spot / preemptible VM's SIGTERM, or Ctrl-C): the step in progress is finished and saved as a
checkpoint, `preempted at step N: checkpoint saved` goes to stderr, and the command exits with status 143 after
SIGTERM, 130 after SIGINT (128 + the signal, as a shell reports a process the signal ended), skipping the final
calibration and --summary-json; rerunning the same command resumes from step N and ends as an uninterrupted run
would. A second signal while that checkpoint is written is ignored (SIGKILL still stops it; an unfinished save is
never used). On several hosts all of them stop at the same step (train/preemption.py).

Compile for a Cloud TPU pod from any machine (libtpu, the `tpu` extra; no TPU, no data read, nothing written):
  translocator-train --config configs/translocator_b16_mp16.py --compile-only --topology v5e:16x16 \
      [--slices 2] [--set model.dtype=bfloat16] [--json out.json] [--max-batch]
prints per-chip memory against the HBM, compile time, collectives, FLOPs and a roofline step-time estimate; a
step that does not fit exits 2 with one line saying what would help (train/aot.py, runtime/tpu.py).

Workdir: config.json, checkpoints/<step>/{state,data,config}, metrics.jsonl, tensorboard/ (gs:// works for
checkpoints and metrics through etils.epath), and calibration.json: the confidence radii fitted on the validation
split at the end (infer/calibration.py), when the run has one.
"""
from __future__ import annotations

import argparse
import json
import sys

from translocator_jax import models
from translocator_jax.data import registry
from translocator_jax.infer import calibration
from translocator_jax.runtime import checkpoints, cli, config_io, tpu
from translocator_jax.train import aot
from translocator_jax.train import loop
from translocator_jax.train import preemption

PROG = "translocator-train"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/X.py or configs/X.py:arg")
  p.add_argument("--workdir", help="checkpoints, metrics and config.json go here (not with --compile-only)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set train.total_steps=100 (repeatable)")
  p.add_argument("--summary-json", default=None, help="also write the run summary (losses, fingerprint) here")
  tpu.add_compile_args(p)
  cli.add_verbose_arg(p)
  args = p.parse_args(argv)
  tpu.check_compile_args(args, p)
  if not args.compile_only and not args.workdir:
    p.error("the following arguments are required: --workdir")
  return args


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, sys.argv[1:] if argv is None else argv, prog=PROG)


def _main(argv: list[str]) -> int:
  args = parse_args(argv)
  # Completed and checked (keys, types, ranges, choices) before any dataset is built or anything compiled.
  config = config_io.apply_overrides(config_io.load_config(args.config), args.overrides)
  models.model_kwargs(config.model)  # the model's own checks (a width its heads do not divide)
  if args.compile_only:
    return tpu.run_compile_only(args, config, lambda c: aot.compile_train_step(c, args.topology, args.slices),
                                "train step")
  try:
    summary = loop.train(config, args.workdir)
  except preemption.TrainingPreempted as e:
    return e.exit_status  # the loop printed the one line; the checkpoint of that step is written
  except loop.NonFiniteLossError as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    return 1
  except checkpoints.CheckpointMismatchError as e:
    print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  if registry.validation_set(config, registry.dataset_info(config, config.data.train, need_records=False)):
    fitted = calibration.fit(args.workdir)  # the confidence radii of the final checkpoint
    print(f"confidence radii fitted on {fitted['fitted_on']}: {checkpoints.workdir_of(args.workdir)}/"
          f"{calibration.FILE}", file=sys.stderr)
  if args.summary_json:
    with open(args.summary_json, "w") as f:
      json.dump(summary, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
