"""Records training skipped: each named once, in the log and in WORKDIR/bad_records.json; too many stop the run.

The input pipeline (data/pipeline/training.py TrainBatches) turns a record that cannot be read or decoded into a
row of zeros with mask False (the loss leaves it out; the batch's other records train as usual) and its reason in
batch['error']. Here, in the main process, each such record is named by shard file and position in it (the same
record met again in a later epoch, or after a resume, is not counted twice):

  WORKDIR/bad_records.json  [{"file": ".../mp16-train.array_record-00012-of-00400", "record": 731,
                              "index": 24731, "step": 1520, "error": "cannot be decoded: ..."}, ...]

(with several hosts, host i > 0 writes bad_records.{i}.json: each lists what its own shard of the data met).
More than config.data.max_bad_records distinct records stop the run: the loop saves the step it
is in and raises TooManyBadRecords, one line and exit status 1; rerunning the same command, once the shards are
rebuilt (python -m data_prep.verify names the damaged ones) or the limit raised, resumes from that checkpoint.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from translocator_jax import errors
from translocator_jax.runtime import checkpoints as ckpt_lib
from translocator_jax.runtime import config_schema

FILE = "bad_records.json"
DEFAULT_MAX = config_schema.default("data.max_bad_records")
AGREE_EVERY = 10  # steps between two all-gathers of the over-the-limit flag when there are several hosts


class TooManyBadRecords(errors.Fault):
  """More records than data.max_bad_records could not be read or decoded; the step reached is saved."""

  def __init__(self, count: int, limit: int, step: int, checkpoint: Any, listed: Any):
    self.count, self.limit, self.step = int(count), int(limit), int(step)
    super().__init__(
        f"stopped at step {step}: {count} training records could not be read or decoded, more than "
        f"data.max_bad_records={limit}; they are listed in {listed}; checkpoint step {step} saved to {checkpoint}: "
        "rebuild the damaged shards (python -m data_prep.verify --data_dir DIR names them) or raise "
        "data.max_bad_records, and rerun the same command to resume")


class BadRecords:
  """Notes the skipped rows of each training batch; `agreed(step)` says (on every host alike) when to stop."""

  def __init__(self, workdir: Any, limit: int = DEFAULT_MAX,
               locate: Callable[[int], tuple[str | None, int | None]] | None = None,
               agree_every: int = AGREE_EVERY):
    self.limit = int(limit)  # config.data.max_bad_records, checked >= 0 with the config
    self.locate = locate
    self.agree_every = max(int(agree_every), 1)
    name = FILE if jax.process_index() == 0 else f"bad_records.{jax.process_index()}.json"
    self.path = ckpt_lib.as_path(workdir) / name
    self.entries: list[dict[str, Any]] = []
    if self.path.exists():  # a resumed run: what the first part skipped still counts, and is not named again
      self.entries = json.loads(self.path.read_text())
    self._seen = {int(e["index"]) for e in self.entries}

  @property
  def count(self) -> int:
    return len(self.entries)

  @property
  def exceeded(self) -> bool:
    """This host's own view: more distinct bad records than the limit."""
    return self.count > self.limit

  def note(self, step: int, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Names the batch's skipped records not met before (stderr, the JSON file); returns their entries."""
    errors = batch.get("error")
    if errors is None:
      return []
    rows = np.flatnonzero(np.asarray(errors) != "")
    new = []
    for r in rows:
      index = int(batch["index"][r])
      if index in self._seen:
        continue
      self._seen.add(index)
      file, record = self.locate(index) if self.locate is not None else (None, None)
      entry = {"file": file, "record": record, "index": index, "step": int(step), "error": str(errors[r])}
      new.append(entry)
      where = f"{file} record {record}" if file is not None else "record"
      print(f"bad record skipped at step {step}: {where} (index {index}) {entry['error']}", file=sys.stderr,
            flush=True)
    if new:
      self.entries += new
      self.path.write_text(json.dumps(self.entries, indent=1))
    return new

  def agreed(self, step: int) -> bool:
    """True on every host at the same step once any host is over the limit (an all-gather every agree_every
    steps with several hosts: a save is a collective, so they must stop together)."""
    if jax.process_count() == 1:
      return self.exceeded
    if step % self.agree_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.exceeded))))

  def too_many(self, step: int, checkpoint: Any) -> TooManyBadRecords:
    return TooManyBadRecords(self.count, self.limit, step, checkpoint, self.path)
