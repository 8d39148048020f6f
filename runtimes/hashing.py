"""Content hashes of files, in the lowest layer so pipeline, exporters, calibration and the device
runner (which carries only runtimes/) share one.

Caches, bundles and manifests trust a file only by its content, never by its name or mtime.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in blocks of `chunk` bytes (1 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
