"""Resuming past a corrupt latest checkpoint (SIGKILL + restart is tested on the real pipeline in test_earth_demo)."""
import json
import re

from translocator_jax.runtime import checkpoints


def test_corrupt_latest_checkpoint_falls_back_to_previous(run_train, tmp_path):
  workdir = tmp_path / "run"
  first, _ = run_train(workdir, ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False"))
  assert first["checkpoints"] == [4, 8, 12]
  # Corrupt every file of the latest state checkpoint (keep the names: a half-written, garbled save).
  state_dir = workdir / "checkpoints" / "12" / "state"
  files = [p for p in state_dir.rglob("*") if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * 7)
  second, out = run_train(workdir, ("train.total_steps=12", "train.ckpt_every=4", "train.tensorboard=False"))
  assert "WARNING: checkpoint" in out and "/checkpoints/12 could not be restored" in out, out[-3000:]
  assert "resumed from" in out and "(step 8)" in out, out[-3000:]
  assert second["resumed_from"] == 8
  # Steps 9..12 are redone from step 8 and give the same parameters as the first time.
  assert second["params_fingerprint"] == first["params_fingerprint"]
  assert (workdir / checkpoints.CORRUPT_DIR).is_dir()
  # The restored inference params match too, and the config travels with the checkpoint.
  restored = checkpoints.load_for_inference(workdir)
  config, params = restored.config, restored.params
  assert checkpoints.params_fingerprint(params) == second["params_fingerprint"]
  assert config.model.width == 32 and json.loads((workdir / "config.json").read_text())["model"]["width"] == 32
  restored = checkpoints.load_for_inference(workdir / "checkpoints" / "8")
  config2, params2 = restored.config, restored.params
  assert checkpoints.params_fingerprint(params2) != second["params_fingerprint"]
  assert config2.train.total_steps == 12


def test_a_changed_model_config_stops_instead_of_discarding_the_checkpoints(run_train, tmp_path):
  workdir = tmp_path / "run"
  base = ("train.total_steps=4", "train.ckpt_every=4", "train.tensorboard=False")
  first, _ = run_train(workdir, base)
  assert first["checkpoints"] == [4]
  _, out = run_train(workdir, base + ("train.total_steps=8", "model.width=48"), check=False)
  assert "Traceback" not in out, out[-3000:]  # a clear message, not a crash
  assert "CheckpointMismatchError" in out and "checkpoints/4 holds parameters of another model" in out, out[-3000:]
  assert re.search(r"checkpoint \([^)]*32[^)]*\) vs config \([^)]*48", out), out[-3000:]  # names the shapes
  assert (workdir / "checkpoints" / "4").is_dir() and not (workdir / checkpoints.CORRUPT_DIR).exists()
  # The unchanged config still resumes from it.
  second, out = run_train(workdir, base[1:] + ("train.total_steps=8",))
  assert second["resumed_from"] == 4, out[-3000:]
