"""The artifact store: runs/<stage>/<key>/ entries, committed by atomic rename, guarded by a lock.

An entry exists only once its manifest.json is in place: a stage writes into a hidden staging
folder and renames it to its key when done, so a run killed mid-stage leaves nothing committed
and the next run simply redoes that stage. An entry is served only after its manifest reads back
whole (it carries a checksum of its own content) and every output matches the manifest's size
and sha256 (`Store.lookup`); a damaged entry is reported as such, never as a hit.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifact import Artifact
from pipeline.hashing import sha256_json
from runtimes import errors

MANIFEST = "manifest.json"
REQUIRED = {"stage": str, "version": int, "key": str, "params": dict, "inputs": dict, "outputs": dict}
OPTIONAL = {"metrics": dict, "environment": dict, "timings": dict, "checksum": str}
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def shown(path: Path) -> str:
    """A path as the user typed it: relative to the working folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Damage:
    """A file of the store that does not match what was recorded for it, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{shown(self.path)}: {self.reason}"


class StoreLocked(RuntimeError, errors.StoreError):
    """Another process holds the store's lock; the message names its pid and host."""


class StoreDamaged(RuntimeError, errors.StoreError):
    """A manifest or artifact of the store does not match its record; `damage` says which and why."""

    def __init__(self, damage: Damage, advice: str = ""):
        super().__init__(f"{damage}{'; ' + advice if advice else ''}")
        self.damage = damage


class StoreUnusable(RuntimeError, errors.StoreError):
    """The store folder cannot be written: a file in its place, no permission, or no space left."""


def unusable(root: Path, exc: OSError, doing: str = "") -> StoreUnusable:
    """One line for an OSError met while writing the store at `root`."""
    where = f"artifact store '{root}'"
    what = f" while {doing}" if doing else ""
    if exc.errno in NO_SPACE:
        return StoreUnusable(f"no space left on the disk of {where}{what} ({exc.filename or exc}); "
                             "free some space or set run.store to a folder on a bigger disk; nothing was committed")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreUnusable(f"{where} is not writable{what} ({exc.strerror}: {exc.filename or root}); "
                             "make it writable or set run.store to a folder you can write")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StoreUnusable(f"{where} cannot be a folder: a file is in the way ({exc.filename or root}); "
                             "set run.store to a folder path, or move the file away")
    return StoreUnusable(f"{where} cannot be used{what}: {exc}; set run.store to a usable folder")


@dataclass
class Manifest:
    stage: str
    version: int
    key: str
    params: dict
    inputs: dict            # dep stage -> {"key": ..., "outputs": {name: sha256}}
    outputs: dict[str, Artifact]
    metrics: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    entry_dir: Path | None = None

    def path_of(self, output: str) -> Path:
        """Absolute path of one named output."""
        if output not in self.outputs:
            raise KeyError(f"stage '{self.stage}' has no output '{output}' "
                           f"(it has: {', '.join(sorted(self.outputs))})")
        return self.entry_dir / self.outputs[output].path

    def to_dict(self) -> dict:
        return {"stage": self.stage, "version": self.version, "key": self.key,
                "params": self.params, "inputs": self.inputs,
                "outputs": {k: a.to_dict() for k, a in self.outputs.items()},
                "metrics": self.metrics, "environment": self.environment, "timings": self.timings}

    def damage(self) -> Damage | None:
        """The first output that differs from its record (missing, size, sha256), or None."""
        for artifact in self.outputs.values():
            problem = artifact.problem(self.entry_dir)
            if problem:
                return Damage(*problem)
        return None

    @classmethod
    def load(cls, entry_dir: Path) -> "Manifest":
        """Read and check a manifest; anything unreadable raises StoreDamaged naming the file."""
        path = entry_dir / MANIFEST
        d = _read_object(path)
        missing = [k for k in REQUIRED if k not in d]
        unknown = [k for k in d if k not in REQUIRED and k not in OPTIONAL]
        wrong = [k for k, t in {**REQUIRED, **OPTIONAL}.items()
                 if k in d and not (isinstance(d[k], t) and not isinstance(d[k], bool))]
        for keys, what in ((missing, "missing"), (unknown, "unexpected"), (wrong, "wrongly typed")):
            if keys:
                raise StoreDamaged(Damage(path, f"{what} key(s) {', '.join(map(repr, keys))} (damaged)"))
        if "checksum" in d and d["checksum"] != _checksum(d):
            raise StoreDamaged(Damage(path, "its content differs from its checksum (damaged)"))
        if (d["stage"], d["key"]) != (entry_dir.parent.name, entry_dir.name):
            raise StoreDamaged(Damage(path, f"records stage '{d['stage']}' key '{d['key']}' but lies in "
                                            f"{entry_dir.parent.name}/{entry_dir.name} (damaged)"))
        try:
            outputs = {k: Artifact.from_dict(a) for k, a in d["outputs"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreDamaged(Damage(path, f"an output record is malformed ({exc}) (damaged)")) from None
        return cls(d["stage"], d["version"], d["key"], d["params"], d["inputs"], outputs,
                   d.get("metrics", {}), d.get("environment", {}), d.get("timings", {}), entry_dir=entry_dir)


def _read_object(path: Path) -> dict:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise StoreDamaged(Damage(path, "missing (the entry folder has no manifest)")) from None
    except UnicodeDecodeError:
        raise StoreDamaged(Damage(path, "not UTF-8 text (damaged)")) from None
    except OSError as exc:
        raise StoreDamaged(Damage(path, f"unreadable ({exc.strerror})")) from None
    if not text.strip():
        raise StoreDamaged(Damage(path, "empty (damaged)"))
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreDamaged(Damage(path, f"not valid JSON ({exc.msg} at line {exc.lineno}) (damaged)")) from None
    except RecursionError:
        raise StoreDamaged(Damage(path, "not valid JSON (nested too deep) (damaged)")) from None
    if not isinstance(d, dict):
        raise StoreDamaged(Damage(path, f"holds a JSON {type(d).__name__}, not an object (damaged)"))
    return d


def _checksum(d: dict) -> str:
    return sha256_json({k: v for k, v in d.items() if k != "checksum"})


class Store:
    """runs/ on disk. Use as a context manager to hold the writer lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_file = None

    def check_root(self) -> None:
        """Refuse a store path that names a file (or lies under one) before anything reads it."""
        for p in (self.root, *self.root.parents):
            if p.exists():
                if not p.is_dir():
                    raise StoreUnusable(f"run.store '{self.root}' is not a folder: {p} is a file; set "
                                        "run.store to a folder path, or move the file away")
                return

    # ------------------------------------------------------------ lock
    def __enter__(self) -> "Store":
        self.check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / ".lock", "a+")
        except OSError as exc:
            raise unusable(self.root, exc, "taking its lock") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreLocked(f"artifact store '{self.root}' is in use by {holder}; "
                              "wait for that run to finish (the lock frees itself when it exits)")
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} "
                    f"('{' '.join(sys.argv[:4])}', started {time.strftime('%Y-%m-%d %H:%M:%S')})")
            f.flush()
            tempfile.TemporaryFile(dir=self.root).close()   # a lock file we may write says little
        except OSError as exc:
            f.close()
            raise unusable(self.root, exc, "taking its lock") from None
        self._lock_file = f
        self._sweep_staging()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_file:
            self._lock_file.truncate(0)
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _sweep_staging(self) -> None:
        """Staging folders left by killed runs are garbage: only a lock holder writes, and it is us."""
        for tmp in self.root.glob("*/.staging-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------ entries
    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> tuple[Manifest | None, Damage | None]:
        """(manifest, None) for an entry whose manifest and outputs all check out; (None, damage)
        for a damaged one; (None, None) when there is no entry."""
        d = self.entry_dir(stage, key)
        if not d.is_dir():
            return None, None
        try:
            manifest = Manifest.load(d)
        except StoreDamaged as exc:
            return None, exc.damage
        damage = manifest.damage()
        return (None, damage) if damage else (manifest, None)

    def get(self, stage: str, key: str) -> Manifest | None:
        """The entry, checked (see `lookup`); None when absent or damaged."""
        return self.lookup(stage, key)[0]

    def entries(self, stage: str) -> list[Manifest]:
        """Committed entries of a stage whose manifests read back whole, newest first (outputs unchecked)."""
        out = []
        for p in (self.root / stage).glob(f"*/{MANIFEST}"):
            try:
                out.append(Manifest.load(p.parent))
            except StoreDamaged:
                continue
        return sorted(out, key=lambda m: m.timings.get("finished", 0), reverse=True)

    def entry_dirs(self) -> list[Path]:
        """Every committed (or damaged) entry folder, all stages and keys; caches and staging excluded."""
        if not self.root.is_dir():
            return []
        return sorted(e for s in self.root.iterdir() if s.is_dir() and s.name != "cache"
                      and not s.name.startswith(".") for e in s.iterdir()
                      if e.is_dir() and not e.name.startswith("."))

    def staging_dir(self, stage: str, key: str) -> Path:
        d = self.root / stage / f".staging-{key}-{os.getpid()}"
        try:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        except OSError as exc:
            raise unusable(self.root, exc, f"starting {stage}") from None
        return d

    def commit(self, staging: Path, manifest: Manifest) -> Manifest:
        """Write the manifest last, then rename the staging folder to its key (atomic on one filesystem)."""
        d = json.loads(json.dumps(manifest.to_dict(), default=str))   # what a reader will see
        d["checksum"] = _checksum(d)
        try:
            tmp = staging / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(d, indent=2))
            os.replace(tmp, staging / MANIFEST)
            final = self.entry_dir(manifest.stage, manifest.key)
            if final.exists():          # a forced re-run (or a damaged entry) is replaced
                shutil.rmtree(final)
            os.replace(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise unusable(self.root, exc, f"committing {manifest.stage}") from None
        manifest.entry_dir = final
        return manifest
