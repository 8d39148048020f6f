"""Teacher logits computed once per sample and kept on disk, so distillation without augmentation
does not run the teacher every epoch (nor again in the next run with the same teacher and data).

Key = the teacher artifact's sha256 + the data fingerprint + the teacher's preprocessing: a
retrained teacher, changed data or a new input size each miss; nothing else can serve stale
logits, because names and mtimes are not part of the key. A file is read only once its content
matches the hash recorded beside it; a damaged one is recomputed with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from calibration import hash_record
from calibration.preprocess import Preprocessing
from pipeline.config import Augment
from pipeline.hashing import sha256_json

logger = logging.getLogger(__name__)

CACHE_DIR = ("cache", "teacher-logits")


def augmentation_on(aug: Augment) -> bool:
    """Whether training draws new pixels each epoch; without, teacher logits are fixed per sample."""
    return (aug.random_resized_crop is not None or aug.hflip or aug.rotation_deg > 0
            or aug.color_jitter > 0 or aug.mixup > 0 or aug.cutmix > 0)


def cache_key(teacher_sha256: str, data_fingerprint: str, preprocessing: Preprocessing) -> str:
    """The content key of one teacher's logits over one dataset at one preprocessing."""
    return sha256_json({"teacher": teacher_sha256, "data": data_fingerprint,
                        "preprocessing": preprocessing.to_dict()})


class TeacherLogitCache:
    """`<store_root>/cache/teacher-logits/<key>.npy`, float32 [N, classes]; counts hits and misses."""

    def __init__(self, store_root: str | Path, log: Callable[[str], None] | None = None):
        self.folder = Path(store_root).joinpath(*CACHE_DIR)
        self.hits = self.misses = 0
        self.log = log or logger.info

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def get_or_compute(self, teacher_sha256: str, data_fingerprint: str, preprocessing: Preprocessing,
                       compute: Callable[[], np.ndarray], expected_rows: int | None = None) -> np.ndarray:
        """The cached logits, or `compute()` stored atomically (a killed run leaves no partial file)."""
        key = cache_key(teacher_sha256, data_fingerprint, preprocessing)
        path = self.path(key)
        logits = self._load(path) if path.is_file() else None
        if logits is not None:
            if expected_rows is None or logits.shape[0] == expected_rows:
                self.hits += 1
                self.log(f"  teacher logits: cache hit {path.name[:16]} ({logits.shape[0]} samples)")
                return logits
            self.log(f"  teacher logits: {path} holds {logits.shape[0]} rows, expected "
                     f"{expected_rows}; recomputing")
        self.misses += 1
        logits = np.ascontiguousarray(compute(), dtype=np.float32)
        if expected_rows is not None and logits.shape[0] != expected_rows:
            raise ValueError(f"teacher produced {logits.shape[0]} logit rows for {expected_rows} samples")
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, logits, allow_pickle=False)
            hash_record.publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.log(f"  teacher logits: cache miss, computed and stored {path.name[:16]} "
                 f"({logits.shape[0]} samples)")
        return logits

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        """The logits at `path` once they match their hash record, else None (logged)."""
        why = hash_record.problem(path)
        if why is None:
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                why = f"unreadable ({exc})"
        logger.warning(f"teacher logits cache {path}: {why}; recomputing")
        return None

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "folder": str(self.folder)}


def teacher_logits(cache: TeacherLogitCache, teacher, teacher_sha256: str, dataset, data_fingerprint: str,
                   preprocessing: Preprocessing, device) -> np.ndarray:
    """Logits of `teacher` over `dataset` (eval mode, in index order), through the cache."""
    def compute() -> np.ndarray:
        from pipeline.train.loop import predict
        logits, _ = predict(teacher, dataset, device)
        return logits.numpy()
    return cache.get_or_compute(teacher_sha256, data_fingerprint, preprocessing, compute,
                                expected_rows=len(dataset))
