"""Input file collections for the builders: a folder, or a tarball streamed without extracting it.

A tarball (.tar, .tgz, .tar.gz, ...) cannot be read at random, so its members are streamed once into a SQLite
"spool" inside the build's own staging folder (name -> bytes); the parallel pieces of a build then read members
by name. Nothing is ever written under a member's name: members with absolute or `..` names, links and devices are
refused and reported, so a hostile archive cannot write outside the output folder.

Both kinds are `FileStore`s: `.names()` (POSIX relative paths), `.read(name) -> bytes`, `.describe(name)` (for
reports), `.problems` (files refused while listing, as report entries).
"""
from __future__ import annotations

import os
import pathlib
import posixpath
import sqlite3
import tarfile
from typing import Iterable

from tqdm import tqdm

from translocator_jax import errors

TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
# A single member bigger than this is not a photo; reading it whole would only exhaust memory.
MAX_MEMBER_BYTES = 512 * 1024 * 1024
_SPOOL_VERSION = 1


def is_tarball(path: os.PathLike | str) -> bool:
  p = str(path).lower()
  return os.path.isfile(path) and (p.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(path))


def unsafe_name_reason(name: str) -> str | None:
  """Why a member / id name may not be used as a relative path (absolute, `..`, drive letters), else None."""
  if not name:
    return "empty name"
  if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
    return f"absolute path {name!r} refused"
  parts = name.replace("\\", "/").split("/")
  if ".." in parts:
    return f"path with '..' {name!r} refused"
  return None


def normalise_name(name: str) -> str:
  """Member name as a clean relative POSIX path ('./a//b' -> 'a/b')."""
  name = name.replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return posixpath.normpath(name) if name else name


class FolderStore:
  """Regular files under a folder (symbolic links are not followed)."""

  def __init__(self, root: os.PathLike | str):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f"input folder not found: {self.root}")
    self.problems: list[dict] = []
    self._names: list[str] | None = None

  def names(self) -> list[str]:
    if self._names is None:
      names = []
      for dirpath, _, files in os.walk(self.root):
        rel_dir = os.path.relpath(dirpath, self.root)
        for f in files:
          full = os.path.join(dirpath, f)
          rel = f if rel_dir == "." else posixpath.join(rel_dir.replace(os.sep, "/"), f)
          if os.path.islink(full) or not os.path.isfile(full):
            self.problems.append({"source": full, "reason": "not a regular file (link or device): skipped"})
            continue
          names.append(rel)
      self._names = sorted(names)
    return self._names

  def read(self, name: str) -> bytes:
    return (self.root / name).read_bytes()

  def describe(self, name: str) -> str:
    return str(self.root / name)

  def spec(self) -> dict:
    return {"kind": "folder", "root": str(self.root)}

  def __getstate__(self):  # Sent to every worker with each piece: leave the (possibly huge) listing behind.
    state = dict(self.__dict__)
    state["_names"] = None
    state["problems"] = []
    return state


class TarStore:
  """Members of a tarball, spooled once into SQLite at `spool_path` (reused when complete and up to date)."""

  def __init__(self, archive: os.PathLike | str, spool_path: os.PathLike | str, *, progress: bool = True):
    self.archive = pathlib.Path(archive)
    if not self.archive.is_file():
      raise FileNotFoundError(f"input archive not found: {self.archive}")
    self.spool_path = pathlib.Path(spool_path)
    self._conn: sqlite3.Connection | None = None
    self._ensure_spool(progress)
    conn = self._connection()
    self.problems = [{"source": s, "reason": r} for s, r in conn.execute("SELECT source, reason FROM problems "
                                                                          "ORDER BY rowid")]

  def _stamp(self) -> str:
    st = self.archive.stat()
    return f"v{_SPOOL_VERSION}:{self.archive.resolve()}:{st.st_size}:{int(st.st_mtime)}"

  def _ensure_spool(self, progress: bool) -> None:
    if self.spool_path.exists():
      try:
        with sqlite3.connect(f"file:{self.spool_path}?mode=ro", uri=True) as conn:
          (stamp,) = conn.execute("SELECT value FROM info WHERE key='stamp'").fetchone()
        if stamp == self._stamp():
          return
      except sqlite3.Error:
        pass
      self.spool_path.unlink()
    # Written under a temporary name and renamed when complete: a crash leaves no half spool behind.
    tmp = self.spool_path.with_name(self.spool_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    self.spool_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE files (name TEXT PRIMARY KEY, data BLOB)")
    conn.execute("CREATE TABLE problems (source TEXT, reason TEXT)")
    conn.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT)")
    where = str(self.archive)
    try:
      with tarfile.open(self.archive, "r|*") as tar:  # Stream mode: one sequential pass, no seeking.
        for member in tqdm(tar, desc=f"reading {self.archive.name}", unit=" files", disable=not progress):
          if member.isdir():
            continue
          source = f"{where}:{member.name}"
          reason = unsafe_name_reason(member.name)
          if reason is None and not member.isfile():
            reason = "not a regular file (link or device)"
          if reason is None and member.size > MAX_MEMBER_BYTES:
            reason = f"member of {member.size} bytes exceeds {MAX_MEMBER_BYTES}"
          if reason is not None:
            conn.execute("INSERT INTO problems VALUES (?, ?)", (source, f"{reason}: skipped, not extracted"))
            continue
          f = tar.extractfile(member)
          data = f.read() if f is not None else b""
          cur = conn.execute("INSERT OR IGNORE INTO files VALUES (?, ?)", (normalise_name(member.name), data))
          if cur.rowcount == 0:
            conn.execute("INSERT INTO problems VALUES (?, ?)",
                         (source, "duplicate member name in archive: first copy kept"))
    except (tarfile.TarError, OSError, EOFError) as e:
      # A truncated/corrupt archive: keep what was read, report where it stopped.
      conn.execute("INSERT INTO problems VALUES (?, ?)",
                   (where, f"archive unreadable past this point ({type(e).__name__}: {e}); members after it "
                           "are missing"))
    conn.execute("INSERT INTO info VALUES ('stamp', ?)", (self._stamp(),))
    conn.commit()
    conn.close()
    os.replace(tmp, self.spool_path)

  def _connection(self) -> sqlite3.Connection:
    if self._conn is None:
      self._conn = sqlite3.connect(f"file:{self.spool_path}?mode=ro", uri=True, check_same_thread=False)
    return self._conn

  def names(self) -> list[str]:
    return [n for (n,) in self._connection().execute("SELECT name FROM files ORDER BY name")]

  def read(self, name: str) -> bytes:
    row = self._connection().execute("SELECT data FROM files WHERE name=?", (name,)).fetchone()
    if row is None:
      raise KeyError(f"{name!r} not in {self.archive}")
    return bytes(row[0])

  def describe(self, name: str) -> str:
    return f"{self.archive}:{name}"

  def spec(self) -> dict:
    return {"kind": "tar", "archive": str(self.archive), "spool": str(self.spool_path)}

  def __getstate__(self):  # Worker processes reopen the spool themselves.
    state = dict(self.__dict__)
    state["_conn"] = None
    return state


def open_store(path: os.PathLike | str, staging_dir: os.PathLike | str, role: str, *,
               progress: bool = True) -> FolderStore | TarStore:
  """A FolderStore for a folder, a TarStore (spooled into `staging_dir/spool-{role}.sqlite`) for a tarball."""
  path = pathlib.Path(path)
  if path.is_dir():
    return FolderStore(path)
  if not path.exists():
    raise FileNotFoundError(f"{role} input not found: {path}")
  if not is_tarball(path):
    raise errors.BuildError(f"{role} input {path} is neither a folder nor a tar archive")
  return TarStore(path, pathlib.Path(staging_dir) / f"spool-{role}.sqlite", progress=progress)


def strip_components(name: str, k: int) -> str | None:
  parts = name.split("/")
  return "/".join(parts[k:]) if len(parts) > k else None


class NameIndex:
  """Finds the store file for an id: the id is the file's path after `k` leading folders (auto-detected: archives
  often wrap everything in one top folder), and an id without extension also matches by file stem.
  """

  def __init__(self, names: Iterable[str], ids_sample: Iterable[str], max_strip: int = 3):
    names = list(names)
    sample = set(ids_sample)
    best_k, best_hits = 0, -1
    probe = names if len(names) <= 20000 else names[:: max(1, len(names) // 20000)]
    sample_stems = {posixpath.splitext(i)[0] for i in sample}
    for k in range(max_strip + 1):
      stripped = [strip_components(n, k) for n in probe]
      hits = sum(1 for s in stripped if s is not None and (s in sample or posixpath.splitext(s)[0] in sample_stems))
      if hits > best_hits:
        best_k, best_hits = k, hits
    self.strip = best_k
    self.by_name: dict[str, str] = {}
    self.by_stem: dict[str, str | None] = {}
    for n in names:
      s = strip_components(n, best_k)
      if s is None:
        continue
      self.by_name.setdefault(s, n)
      stem = posixpath.splitext(s)[0]
      self.by_stem[stem] = None if stem in self.by_stem else n  # None: ambiguous stem.

  def strip_name(self, name: str) -> str:
    """The id form of a store name (its leading folders stripped as detected)."""
    return strip_components(name, self.strip) or name

  def lookup(self, image_id: str) -> str | None:
    name = self.by_name.get(image_id)
    if name is None and not posixpath.splitext(image_id)[1]:
      name = self.by_stem.get(image_id)
    return name
