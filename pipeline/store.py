"""The artifact store: runs/<stage>/<key>/ entries, committed by atomic rename, guarded by a lock.

An entry exists only once its manifest.json is in place: a stage writes into a hidden staging
folder and renames it to its key when done, so a run killed mid-stage leaves nothing committed
and the next run simply redoes that stage.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifact import Artifact
from runtimes import errors

MANIFEST = "manifest.json"


class StoreLocked(RuntimeError, errors.StoreError):
    """Another process holds the store's lock; the message names its pid and host."""


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

    @classmethod
    def load(cls, entry_dir: Path) -> "Manifest":
        d = json.loads((entry_dir / MANIFEST).read_text())
        return cls(d["stage"], d["version"], d["key"], d["params"], d["inputs"],
                   {k: Artifact.from_dict(a) for k, a in d["outputs"].items()},
                   d.get("metrics", {}), d.get("environment", {}), d.get("timings", {}),
                   entry_dir=entry_dir)


class Store:
    """runs/ on disk. Use as a context manager to hold the writer lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_file = None

    # ------------------------------------------------------------ lock
    def __enter__(self) -> "Store":
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreLocked(f"artifact store '{self.root}' is in use by {holder}; "
                              "wait for that run to finish (the lock frees itself when it exits)")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} "
                f"('{' '.join(sys.argv[:4])}', started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        f.flush()
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

    def get(self, stage: str, key: str) -> Manifest | None:
        d = self.entry_dir(stage, key)
        return Manifest.load(d) if (d / MANIFEST).is_file() else None

    def entries(self, stage: str) -> list[Manifest]:
        """Committed entries of a stage, newest first."""
        out = [Manifest.load(p.parent) for p in (self.root / stage).glob(f"*/{MANIFEST}")]
        return sorted(out, key=lambda m: m.timings.get("finished", 0), reverse=True)

    def staging_dir(self, stage: str, key: str) -> Path:
        d = self.root / stage / f".staging-{key}-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def commit(self, staging: Path, manifest: Manifest) -> Manifest:
        """Write the manifest last, then rename the staging folder to its key (atomic on one filesystem)."""
        tmp = staging / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2, default=str))
        os.replace(tmp, staging / MANIFEST)
        final = self.entry_dir(manifest.stage, manifest.key)
        if final.exists():          # a forced re-run replaces the old entry
            shutil.rmtree(final)
        os.replace(staging, final)
        manifest.entry_dir = final
        return manifest
