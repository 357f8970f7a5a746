"""Metrics out: a JSON-lines file and TensorBoard event files in the workdir (process 0 only)."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


def _plain(v: Any) -> Any:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN / inf
  return v


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = epath.Path(workdir) / METRICS_FILE
    self._tb = None
    if self.active:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(epath.Path(workdir) / TB_DIR))

  def write(self, step: int, record: dict[str, Any], prefix: str = "") -> None:
    if not self.active:
      return
    record = {k: _plain(v) for k, v in record.items()}
    with self.path.open("a") as f:
      f.write(json.dumps({"step": int(step), **record}) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(prefix + k, v, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
