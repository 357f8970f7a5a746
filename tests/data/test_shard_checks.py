"""Damaged shards found and named: the manifest every build writes, the check every reader makes when it opens a
split, and data_prep.verify (checksums, every record read back), on copies of the tiny Earth-patches set."""
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from translocator_jax.data.build import verify
from translocator_jax.data.earth_patches import dataset as earth_patches
from translocator_jax.data.records import manifest
from translocator_jax.data.records import sources

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def earth_copy(earth_tiny_data, tmp_path):
  """A private copy of the session's tiny Earth-patches set: (TFDS data dir, dataset folder)."""
  root = tmp_path / "tfds"
  shutil.copytree(earth_tiny_data, root, ignore=shutil.ignore_patterns("*.lock"))
  return root, earth_patches.dataset_dir(root, "tiny")


def _shard(dataset_dir, split):
  return manifest.split_shards(dataset_dir)[split][0][0]


def _flip_byte(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0x40]))


def _offset_in_record_data(path):
  """An offset whose byte lies inside a record chunk's compressed data (not a block or chunk header), near the
  middle of the file. Chunk boundaries follow the encoded photos' sizes, which differ from machine to machine, so
  the offset is found by trying: a byte flipped there must fail its chunk's data hash."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  original = path.read_bytes()
  for offset in range(len(original) // 2 + 1000, len(original), 97):
    _flip_byte(path, offset)
    reader = array_record_module.ArrayRecordReader(str(path), "readahead_buffer_size:0,max_parallelism:0")
    try:
      reader.read(list(range(reader.num_records())))
      why = ""
    except RuntimeError as e:
      why = str(e)
    finally:
      try:
        reader.close()
      except RuntimeError:
        pass
    path.write_bytes(original)
    if "chunk data hash mismatch" in why:
      return offset
  raise AssertionError(f"no byte of {path}'s second half lies in record data")


def _verify(*args):
  proc = subprocess.run([sys.executable, "-m", "data_prep.verify", "--no-progress", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def test_the_earth_build_records_each_shards_size_count_and_checksum(earth_tiny_data):
  d = earth_patches.dataset_dir(earth_tiny_data, "tiny")
  m = json.loads((d / manifest.MANIFEST).read_text())
  info = earth_patches.load_info(d)
  assert set(m["splits"]) == set(info.num_examples)
  for split, files in manifest.split_shards(d).items():
    assert [e["file"] for e in m["splits"][split]] == [p.name for p, _ in files]
    for (path, n), entry in zip(files, m["splits"][split]):
      assert entry == {"file": path.name, "bytes": path.stat().st_size, "records": n,
                       "xxh3_64": manifest.checksum(path)}
    assert sum(e["records"] for e in m["splits"][split]) == info.num_examples[split]
  # The command that builds this very folder again.
  assert m["rebuild"] == {"command": f"python -m data_prep.build_earth_patches --output {earth_tiny_data} "
                                     "--config tiny", "cwd": m["rebuild"]["cwd"], "scope": "dataset"}
  assert earth_patches.dataset_dir(earth_tiny_data, "tiny") == d


def test_a_shard_cut_short_is_refused_when_its_split_is_opened(earth_copy, earth_tiny_data):
  _, d = earth_copy
  train = _shard(d, "train")
  os.truncate(train, train.stat().st_size - 3)
  with pytest.raises(manifest.DamagedShardError) as e:
    sources.open_source(d, "train")
  text = str(e.value)
  assert "\n" not in text
  assert text.startswith(f"damaged shard {train}: {train.stat().st_size} bytes, the manifest says "
                         f"{train.stat().st_size + 3} (3 bytes short: cut off)"), text
  # The command the build recorded (this copy's original was built under earth_tiny_data).
  assert text.endswith(f"; rebuild the set: remove {d} and run python -m data_prep.build_earth_patches --output "
                       f"{earth_tiny_data} --config tiny"), text
  assert len(sources.open_source(d, "test")) == 60  # the other splits still open
  # A missing shard is named the same way; so is a manifest of another build.
  train.unlink()
  with pytest.raises(manifest.DamagedShardError, match=f"damaged shard {train}: the file is missing"):
    sources.open_source(d, "train")
  m = json.loads((d / manifest.MANIFEST).read_text())
  m["splits"]["test"].append(m["splits"]["test"][0])
  (d / manifest.MANIFEST).write_text(json.dumps(m))
  with pytest.raises(manifest.DamagedShardError, match="lists 1 shard.* of split 'test', shards.json 2"):
    sources.open_source(d, "test")


def test_a_set_built_before_manifests_opens_with_one_warning(earth_copy, caplog):
  _, d = earth_copy
  (d / manifest.MANIFEST).unlink()
  with caplog.at_level(logging.WARNING):
    assert len(sources.open_source(d, "validation")) == 60
    sources.open_source(d, "validation")
  warnings = [r.getMessage() for r in caplog.records if r.name == manifest.__name__]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert warnings[0].startswith(f"{d} has no shards.json (built before shard manifests)")
  assert f"python -m data_prep.verify --data_dir {d} --write-manifest" in warnings[0]


def test_verify_passes_a_sound_set_and_names_a_shard_cut_short(earth_copy):
  root, d = earth_copy
  rc, out, err = _verify("--data_dir", root, "--name", "earth_patches")
  assert rc == 0, out + err
  assert "verified 1 dataset(s): 3 shard(s), 360 records (0 read back)" in out
  assert f"{d}: 3 shard(s), 360 records: ok" in out
  train = _shard(d, "train")
  os.truncate(train, train.stat().st_size - 5)
  rc, out, err = _verify("--data_dir", root)
  assert rc == 1, out + err
  assert "Traceback" not in out + err
  bad = [line for line in out.splitlines() if str(train) in line]
  assert len(bad) == 1, out
  assert "5 bytes short: cut off" in bad[0] and "checksum" in bad[0]
  assert "footer (the record index) cannot be read" in bad[0]
  assert f"rebuild the set: remove {d} and run python -m data_prep.build_earth_patches" in bad[0]
  assert "bad shards (1):" in out


def test_verify_names_a_flipped_byte_and_the_records_it_damaged(earth_copy):
  root, d = earth_copy
  train, test = _shard(d, "train"), _shard(d, "test")
  _flip_byte(train, _offset_in_record_data(train))
  _flip_byte(test, test.stat().st_size - 100)   # in the footer's padding: only the checksum sees it
  rc, out, err = _verify("--data_dir", d)
  assert rc == 1, out + err
  lines = {p: [line for line in out.splitlines() if line.startswith(f"  {p}:")] for p in (train, test)}
  assert len(lines[train]) == 1 and len(lines[test]) == 1, out
  assert "the manifest says" in lines[train][0] and "its bytes changed since the build" in lines[train][0]
  assert "1 of 240 records unreadable: record " in lines[train][0]
  assert "Corrupted Riegeli/records file: chunk data hash mismatch" in lines[train][0]
  assert "records unreadable" not in lines[test][0] and "its bytes changed" in lines[test][0]
  report = verify.verify(d, progress=False, workers=1)
  (bad_train,) = [r for r in report["bad"] if r["file"] == str(train)]
  (bad_record, _), = bad_train["bad_records"]
  # The same record fails where training reads it.
  with pytest.raises(sources.BadRecordError, match=f"{train} record {bad_record} "):
    sources.ArrayRecordSource(d, "train")[bad_record]


def test_verify_reads_every_record_of_an_older_set_and_adds_its_manifest(earth_copy, tmp_path):
  root, d = earth_copy
  expected = json.loads((d / manifest.MANIFEST).read_text())
  (d / manifest.MANIFEST).unlink()
  rc, out, err = _verify("--data_dir", root, "--write-manifest")
  assert rc == 0, out + err
  assert "360 records (360 read back)" in out and "no shards.json (built before manifests)" in out
  assert f"wrote {d / manifest.MANIFEST}" in out
  written = json.loads((d / manifest.MANIFEST).read_text())
  assert written["splits"] == expected["splits"]
  rc, out, _ = _verify("--data_dir", root, "--full")
  assert rc == 0 and "360 records (360 read back)" in out and "no shards.json" not in out
  # Nothing to verify: one line, exit 2.
  rc, out, err = _verify("--data_dir", tmp_path / "empty_nowhere")
  assert rc == 2 and err.strip() == f"python -m data_prep.verify: error: {tmp_path / 'empty_nowhere'}: no such folder"
