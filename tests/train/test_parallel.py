"""The same run on 1 device, 8 fake devices (data parallel and FSDP) and 2 processes gives the same losses."""
import json
import socket
import subprocess

import numpy as np
import pytest

# The same run as test_resume's first one: the 1-device program comes from the compilation cache.
OVERRIDES = ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False")


def _losses(summary):
  losses = np.asarray(summary["losses"])
  assert len(losses) == 12 and np.all(np.isfinite(losses))
  return losses


@pytest.fixture(scope="module")
def reference(run_train, tmp_path_factory):
  summary, _ = run_train(tmp_path_factory.mktemp("one_device") / "w", OVERRIDES)
  return summary


def test_eight_fake_devices_match_one(reference, run_train, tmp_path):
  # FSDP with every array sharded: the batch split 8 ways *and* parameters / optimizer state split 8 ways
  # (replicated parameters are covered by the two-process test below).
  extra = ("train.fsdp=True", "train.fsdp_min_size=0")
  summary, _ = run_train(tmp_path / "w", OVERRIDES + extra, devices=8)
  ref = _losses(reference)
  np.testing.assert_allclose(_losses(summary), ref, rtol=2e-4, atol=2e-5)
  assert not np.allclose(ref[0], ref[-1]), "the run did not train"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(reference, train_tools, tmp_path):
  port = _free_port()
  workdir = tmp_path / "w"
  procs = []
  for i in range(2):
    env = {**train_tools.env(1), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}
    cmd = train_tools.cmd(workdir, overrides=OVERRIDES, summary=tmp_path / f"summary_{i}.json")
    procs.append(subprocess.Popen(cmd, env=env, cwd=train_tools.repo, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  summaries = [json.loads((tmp_path / f"summary_{i}.json").read_text()) for i in range(2)]
  ref = _losses(reference)
  for s in summaries:
    np.testing.assert_allclose(_losses(s), ref, rtol=2e-4, atol=2e-5)
  # Both processes hold the same parameters, and they equal the single-process run's up to float error.
  assert summaries[0]["params_fingerprint"] == summaries[1]["params_fingerprint"]
  # Each process saved its own data-iterator state beside the shared train state.
  data_dir = workdir / "checkpoints" / "12" / "data"
  assert sorted(p.name for p in data_dir.glob("process_*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
