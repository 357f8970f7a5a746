"""Every command, run as a new user would (a subprocess), says a mistake in one line `PROG: error: ...` naming it
and exits 2, with no traceback; no dataset is built and nothing trained before the refusal."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from translocator_jax import errors, models, paths
from translocator_jax.runtime import cli
from translocator_jax.commands import train as train_main

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = "configs/earth_demo.py:tiny"
TRAIN, EVAL, PREDICT = "translocator-train", "translocator-eval", "translocator-predict"
GALLERY, DEMO = "translocator-gallery", "python -m translocator_jax.commands.demo"
CALIBRATION = "python -m translocator_jax.commands.calibrate"
MODULES = {TRAIN: "translocator_jax.commands.train", EVAL: "translocator_jax.commands.evaluate",
           PREDICT: "translocator_jax.commands.predict", GALLERY: "translocator_jax.commands.gallery",
           DEMO: "translocator_jax.commands.demo", CALIBRATION: "translocator_jax.commands.calibrate"}
USAGE = "usage"  # argparse's own refusal: its usage block, then the one error line

# (command, arguments ({tmp}: a fresh folder, {photo}: a JPEG there, {file}: a plain file, {typo_config}: the tiny
# demo config with a misspelt key), message, usage?)
CASES = {
    "train: unknown key": (TRAIN, ["--config", TINY, "--set", "model.depht=3"],
                           "no key 'model.depht'; did you mean model.depth?", None),
    "train: value of another type": (TRAIN, ["--config", TINY, "--set", "data.batch_size=abc"],
                                     "expected int (the config has 16), got str", None),
    "train: unknown key in the config file": (TRAIN, ["--config", "{typo_config}"],
                                              "config model.depht=3: unknown key; did you mean model.depth?", None),
    "train: unknown variant": (TRAIN, ["--config", TINY, "--set", "model.variant=Q/99"],
                               "config model.variant='Q/99': must be a ViT variant: Ti, S, B, L", None),
    "train: unknown fusion": (TRAIN, ["--config", TINY, "--set", "model.fusion=bogus"],
                              "config model.fusion='bogus': must be one of 'cls_sum', 'late_concat', 'none'", None),
    "train: unknown seg input": (TRAIN, ["--config", TINY, "--set", "model.seg_input=rgb"],
                                 "config model.seg_input='rgb': must be one of 'palette', 'classes'", None),
    "train: unknown remat policy": (TRAIN, ["--config", TINY, "--set", "model.remat_policy='bogus'"],
                                    "config model.remat_policy='bogus': must be one of 'nothing_saveable'", None),
    "train: zero width": (TRAIN, ["--config", TINY, "--set", "model.width=0"],
                          "config model.width=0: must be a whole number > 0", None),
    "train: mesh axis of 0": (TRAIN, ["--config", TINY, "--set", "mesh.data=0"],
                              "config mesh.data=0: must be a whole number > 0, or -1 for the remaining devices", None),
    "train: fsdp with another mesh": (TRAIN, ["--config", TINY, "--set", "train.fsdp=True", "--set", "mesh.fsdp=2"],
                                      "config train.fsdp=True: must be False with mesh.data=-1, mesh.fsdp=2", None),
    "train: negative learning rate": (TRAIN, ["--config", TINY, "--set", "optim.learning_rate=-0.1"],
                                      "config optim.learning_rate=-0.1: must be > 0", None),
    "train: label smoothing of 1": (TRAIN, ["--config", TINY, "--set", "loss.label_smoothing=1.0"],
                                    "config loss.label_smoothing=1.0: must be in [0, 1)", None),
    "train: batch of 0": (TRAIN, ["--config", TINY, "--set", "data.batch_size=0"],
                          "config data.batch_size=0: must be a whole number > 0", None),
    "train: negative warm-up, compile only": (TRAIN, ["--config", TINY, "--set", "optim.warmup_steps=-3",
                                                      "--compile-only", "--topology", "v5e:2x2"],
                                              "config optim.warmup_steps=-3: must be a whole number >= 0", None),
    "train: missing config file": (TRAIN, ["--config", "configs/nope.py"],
                                   "config file configs/nope.py not found", None),
    "train: unknown config argument": (TRAIN, ["--config", "configs/earth_demo.py:nosucharg"],
                                       "configs/earth_demo.py has no config 'nosucharg'", None),
    "train: misspelt config argument": (TRAIN, ["--config", "configs/earth_demo.py:tiyn"],
                                        "did you mean configs/earth_demo.py:tiny?", None),
    "train: unknown flag": (TRAIN, ["--config", TINY, "--bogus-flag"], "unrecognized arguments: --bogus-flag", USAGE),
    "eval: missing workdir": (EVAL, ["--workdir", "{tmp}/nowhere"], "{tmp}/nowhere: not a workdir", None),
    "eval: a folder without checkpoints": (EVAL, ["--checkpoint", "{tmp}"], "not a workdir (no checkpoints/)", None),
    "eval: unknown tta": (EVAL, ["--workdir", "{tmp}", "--tta", "bogus"], "invalid choice: 'bogus'", USAGE),
    "eval: no checkpoint given": (EVAL, [], "one of the arguments --workdir --checkpoint is required", USAGE),
    "predict: missing checkpoint": (PREDICT, ["{photo}", "--checkpoint", "{tmp}/nowhere"],
                                    "{tmp}/nowhere: not a workdir", None),
    "predict: missing map folder": (PREDICT, ["{photo}", "--checkpoint", "{tmp}", "--seg-dir", "{tmp}/no_maps"],
                                    "--seg-dir {tmp}/no_maps: no such folder", None),
    "predict: maps not one per photo": (PREDICT, ["{photo}", "--checkpoint", "{tmp}", "--seg", "a.png", "b.png"],
                                        "--seg takes one map per photo (1 photos, 2 maps)", None),
    "gallery: missing workdir": (GALLERY, ["--workdir", "{tmp}/nowhere"], "not a workdir", None),
    "calibration: missing workdir": (CALIBRATION, ["--workdir", "{tmp}/nowhere"], "not a workdir", None),
    "demo: unknown flag": (DEMO, ["--workdir", "{tmp}/w", "--bogus-flag"], "unrecognized arguments: --bogus-flag",
                           USAGE),
    "demo: bad option value": (DEMO, ["--workdir", "{tmp}/w", "--examples", "-1"],
                               "argument --examples: expected a whole number >= 0, got '-1'", USAGE),
    "demo: data dir that is a file": (DEMO, ["--workdir", "{tmp}/w", "--quick", "--data-dir", "{file}"],
                                      "Not a directory", None),
    "photos: missing input": ("data_prep.photos_to_dataset", ["--input", "{tmp}/nowhere", "--output", "{tmp}/o"],
                              "images input not found: {tmp}/nowhere", None),
    "photos: no maps, no segmenter, no --no-seg": (
        "data_prep.photos_to_dataset", ["--input", "{tmp}/photos", "--output", "{tmp}/o", "--no-cells"],
        "1 photos have no segmentation map", None),
    "photos: missing positions CSV": ("data_prep.photos_to_dataset",
                                      ["--input", "{tmp}/photos", "--csv", "{tmp}/pos.csv", "--output", "{tmp}/o"],
                                      "positions CSV not found: {tmp}/pos.csv", None),
    "photos: bad count": ("data_prep.photos_to_dataset",
                          ["--input", "{tmp}/photos", "--piece-size", "0", "--output", "{tmp}/o"],
                          "argument --piece-size: expected a whole number > 0, got '0'", USAGE),
    "earth patches: bad taus": ("data_prep.build_earth_patches", ["--output", "{tmp}/o", "--taus", "[1,2]"],
                                "argument --taus: '[1,2]' is not JSON [[tau_min, tau_max], ...]", USAGE),
    "earth patches: bad size": ("data_prep.build_earth_patches", ["--output", "{tmp}/o", "--num-train", "-5"],
                                "earth_patches option num_train must be > 0, got -5", None),
    "earth patches: output is a file": ("data_prep.build_earth_patches", ["--output", "{file}", "--config", "tiny"],
                                        "Not a directory", None),
    "benchmark: missing CSV": ("data_prep.build_benchmark", ["--name", "x", "--csv", "{tmp}/x.csv", "--images",
                                                            "{tmp}/photos", "--output", "{tmp}/o"],
                               "metadata CSV not found: {tmp}/x.csv", None),
    "benchmark: yfcc4k without its CSV": ("data_prep.build_benchmark", ["--name", "yfcc4k", "--images",
                                                                       "{tmp}/photos", "--output", "{tmp}/o"],
                                          "yfcc4k: pass its metadata CSV", None),
    "mp16: missing CSV": ("data_prep.build_mp16", ["--csv", "{tmp}/mp16.csv", "--images", "{tmp}/photos",
                                                   "--segmentations", "{tmp}/photos", "--output", "{tmp}/o"],
                          "metadata CSV not found: {tmp}/mp16.csv", None),
    "partitions: missing input": ("data_prep.build_partitions", ["--input", "{tmp}/mp16.csv", "--output", "{tmp}/o"],
                                  "{tmp}/mp16.csv: no such CSV file or dataset folder", None),
    "segment: missing model folder": ("data_prep.segment", ["--images", "{tmp}/photos", "--output", "{tmp}/o",
                                                            "--model", "{tmp}/no_model"],
                                      "segmenter model folder not found: {tmp}/no_model", None),
}


TYPO_CONFIG = ("import runpy\n"
               "def get_config(arg=None):\n"
               "  c = runpy.run_path('configs/earth_demo.py')['get_config']('tiny')\n"
               "  c.model.depht = 3\n"
               "  return c\n")


def _prog(command: str) -> str:
  return f"python -m {command}" if command.startswith("data_prep.") else command


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_naming_it_and_exit_status_2(case, tmp_path):
  command, args, message, usage = CASES[case]
  (tmp_path / "photos").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.jpg")  # a real photo: only what the case names is wrong
  (tmp_path / "file").write_text("a file, not a folder")
  (tmp_path / "typo_config.py").write_text(TYPO_CONFIG)
  fill = dict(tmp=str(tmp_path), photo=str(tmp_path / "photos" / "a.jpg"), file=str(tmp_path / "file"),
              typo_config=str(tmp_path / "typo_config.py"))
  env = dict(os.environ, TRANSLOCATOR_SHARED_DATA=str(paths.shared_data_dir()), TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("TRANSLOCATOR_TRACEBACK", None)
  if command == TRAIN:
    args = [*args, "--workdir", "{tmp}/w"]
  out = subprocess.run([sys.executable, "-m", MODULES.get(command, command), *[a.format(**fill) for a in args]],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  lines = [l for l in out.stderr.splitlines() if l.strip() and "WARNING" not in l]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
  assert lines and lines[-1].startswith(f"{_prog(command)}: error: "), lines
  assert message.format(**fill) in lines[-1], lines[-1]
  if usage:  # argparse's usage block first, then the one line
    assert lines[0].startswith("usage: ") and sum(": error: " in l for l in lines) == 1, lines
  else:
    assert len(lines) == 1, lines
  # Refused before any dataset was built or any training ran.
  assert not (tmp_path / "tfds").exists()
  assert not list(tmp_path.rglob("*.array_record-*")) and not list(tmp_path.rglob("checkpoints"))


# A bug in our code is not the person's mistake: it reaches them with its traceback (exit status 1), never as a
# one-line `PROG: error: ...` that would send them looking for a mistake they did not make.
SYNTHETIC = "tests/train/synthetic_config.py"
INJECT_BUG = ("import sys\n"
              "from translocator_jax import models\n"
              "from translocator_jax.commands import train as main\n"
              "def bug(*args, **kwargs):\n"
              "  raise ValueError('injected bug')\n"
              "models.model_kwargs = bug\n"
              "sys.exit(main.main(sys.argv[1:]))\n")


def _bug(*args, **kwargs):
  raise ValueError("injected bug")


def test_a_value_error_of_our_own_code_is_not_reported_as_a_user_error(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # cli.run's CPU flags: undone after the test
  monkeypatch.setattr(models, "model_kwargs", _bug)  # what translocator-train calls before any training
  with pytest.raises(ValueError, match="injected bug"):
    train_main.main(["--config", SYNTHETIC, "--workdir", str(tmp_path / "w")])


def test_a_value_error_of_our_own_code_shows_its_traceback_and_exit_status_1(tmp_path):
  env = dict(os.environ, TRANSLOCATOR_SHARED_DATA=str(paths.shared_data_dir()))
  env.pop("TRANSLOCATOR_TRACEBACK", None)
  out = subprocess.run([sys.executable, "-c", INJECT_BUG, "--config", SYNTHETIC, "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  assert "Traceback" in out.stderr and out.stderr.rstrip().endswith("ValueError: injected bug"), out.stderr[-3000:]
  assert f"{TRAIN}: error:" not in out.stderr, out.stderr[-3000:]


@pytest.mark.parametrize("error,status", [
    (errors.ConfigError("config.model.depth=0: must be > 0"), 2), (errors.DataError("shard damaged"), 2),
    (errors.CheckpointError("not a ViT checkpoint"), 2), (errors.BuildError("input not found"), 2),
    (errors.InputError("photo.jpg: not a JPEG"), 2), (errors.UserError("give --seg or --seg-dir"), 2),
    (FileNotFoundError("no such file: x"), 2), (errors.Fault("disk full; checkpoint 4 is intact"), 1),
    (json.JSONDecodeError("Expecting value", "{", 1), 2),  # a damaged JSON file on disk
])
def test_cli_run_reports_a_user_error_or_fault_in_one_line(error, status, capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.delenv("TRANSLOCATOR_TRACEBACK", raising=False)

  def main(argv):
    raise error

  assert cli.run(main, [], prog="prog", distributed=False) == status
  assert capsys.readouterr().err == f"prog: error: {error}\n"


@pytest.mark.parametrize("error", [ValueError("injected bug"), KeyError("injected bug"), TypeError("injected bug")])
def test_cli_run_lets_any_other_error_through(error, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

  def main(argv):
    raise error

  with pytest.raises(type(error), match="injected bug"):
    cli.run(main, [], prog="prog", distributed=False)


def test_the_error_types_keep_their_builtin_bases():
  # `except ValueError` handlers and pytest.raises(ValueError) tests written before errors.py still catch them.
  for t in (errors.ConfigError, errors.DataError, errors.CheckpointError, errors.InputError):
    assert issubclass(t, errors.UserError) and issubclass(t, ValueError)
  assert issubclass(errors.BuildError, errors.UserError) and issubclass(errors.BuildError, RuntimeError)
  assert not issubclass(errors.Fault, errors.UserError) and not issubclass(errors.UserError, ValueError)
  assert ValueError not in cli.USER_ERRORS and KeyError not in cli.USER_ERRORS
