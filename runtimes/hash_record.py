"""A cache file's size and sha256, recorded beside it in `<name>.sha256`, and the check on use.

Caches outside the stage entries (teacher logits, calibration tensors, TensorRT engines and
timing caches) are trusted only after their content matches the record: a flipped byte or a
truncated file is rebuilt, never read. The record is written before the file is renamed into
place, so a run killed in between leaves a mismatch (rebuilt next time), not a trusted stale file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from runtimes.hashing import sha256_file

SUFFIX = ".sha256"


def record_path(path: str | Path) -> Path:
    """Where the record of `path` lives: `<path>.sha256` beside it."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def is_record(path: str | Path) -> bool:
    return Path(path).name.endswith(SUFFIX)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(tmp: str | Path, final: str | Path) -> Path:
    """Record the content of the finished file `tmp` as `final`'s, then rename `tmp` to `final`."""
    tmp, final = Path(tmp), Path(final)
    rec = {"sha256": sha256_file(tmp), "size": tmp.stat().st_size}
    _write_atomic(record_path(final), json.dumps(rec))
    os.replace(tmp, final)
    return final


def write_record(path: str | Path) -> None:
    """Record a file written in place by another program (e.g. trtexec's timing cache)."""
    path = Path(path)
    _write_atomic(record_path(path), json.dumps({"sha256": sha256_file(path), "size": path.stat().st_size}))


def problem(path: str | Path) -> str | None:
    """Why the file at `path` cannot be trusted (missing, no record, size or sha256 differs), or None."""
    path, rec_path = Path(path), record_path(path)
    if not path.is_file():
        return "missing"
    try:
        rec = json.loads(rec_path.read_text())
        sha, size = rec["sha256"], rec["size"]
    except FileNotFoundError:
        return f"no hash record beside it ({rec_path.name}), so its content cannot be checked"
    except (OSError, ValueError, TypeError, KeyError):
        return f"its hash record {rec_path.name} is unreadable (damaged)"
    actual = path.stat().st_size
    if actual != size:
        return f"size {actual} bytes differs from its record's {size} (damaged)"
    if sha256_file(path) != sha:
        return "sha256 differs from its record (damaged)"
    return None


def discard(path: str | Path) -> None:
    """Remove a cache file and its record (before rebuilding it)."""
    Path(path).unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)
