"""On-disk cache of preprocessed calibration tensors, keyed by the calibration fingerprint.

Decoding and resizing a few hundred images costs more than quantizing a small model; a
re-run with the same sample and preprocessing loads `<cache_dir>/<fingerprint>.npy` instead,
once its content matches the hash recorded beside it (`calibration.hash_record`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from calibration import hash_record

log = logging.getLogger(__name__)


def tensor_cache_path(cache_dir: Path | str, fingerprint: str) -> Path:
    """Where the tensors of the calibration sample with this fingerprint live."""
    if not fingerprint or any(ch in fingerprint for ch in "/\\."):
        raise ValueError(f"calibration fingerprint {fingerprint!r} is not a plain hex digest")
    return Path(cache_dir) / f"{fingerprint}.npy"


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` through a temporary file and a rename, so readers never see half a
    file, with the hash of its content recorded beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        hash_record.publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path) -> np.ndarray | None:
    """The cached NCHW float32 tensors at `path`, or None when absent, damaged or unreadable."""
    if not path.is_file():
        return None
    why = hash_record.problem(path)
    if why:
        log.warning("calibration cache %s: %s; rebuilding it", path, why)
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("calibration cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if array.dtype != np.float32 or array.ndim != 4:
        log.warning("calibration cache %s holds %s %s, not NCHW float32; rebuilding it", path, array.dtype, array.shape)
        return None
    return array


def load_or_build(
    cache_dir: Path | str, fingerprint: str, build: Callable[[], np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Load the tensors for `fingerprint` from `cache_dir`, or build and store them.

    Returns (tensors, hit). A hit never calls `build`, so no image is read.
    """
    path = tensor_cache_path(cache_dir, fingerprint)
    cached = load_cached(path)
    if cached is not None:
        return cached, True
    array = np.ascontiguousarray(build(), dtype=np.float32)
    save_atomic(path, array)
    return array, False
