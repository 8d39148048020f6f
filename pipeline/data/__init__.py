"""Datasets as train/val image sets: scikit-learn digits, rendered digits, or an ImageFolder tree.

    splits = load_splits(cfg.data, seed=cfg.run.seed)
    splits.train.image(0), splits.train.targets[0], splits.classes, splits.fingerprint

Torch datasets over these sets live in `pipeline.data.torch_dataset` (imported separately, so
this package stays free of torch), transforms in `pipeline.data.transforms`.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import DataKind, DataSpec
from pipeline.data.imageset import DataError, DataWarning, ImageSet, Splits

__all__ = ["DataError", "DataWarning", "ImageSet", "Splits", "load_splits"]


def load_splits(spec: DataSpec, seed: int = 0, store_root: str | Path | None = None) -> Splits:
    """Train and val image sets for `spec`.

    With `store_root`, an ImageFolder scan keeps what it learned about each image in the store's
    cache folder, so the next run decodes only images that changed.

    `seed` selects which images synthetic-digits renders (it is part of their ids and of the
    fingerprint); the digits split and ImageFolder trees do not depend on it, so every run
    seed is scored on the same held-out images.
    """
    if spec.kind == DataKind.digits:
        from pipeline.data.digits import load_digits_splits
        return load_digits_splits(spec)
    if spec.kind == DataKind.synthetic_digits:
        from pipeline.data.synthetic_digits import load_synthetic_splits
        return load_synthetic_splits(spec, seed)
    if spec.kind == DataKind.imagefolder:
        from pipeline.data.imagefolder import load_imagefolder_splits
        from pipeline.data.scan_cache import ScanCache
        return load_imagefolder_splits(spec, ScanCache.in_store(store_root) if store_root else None)
    raise DataError(f"data.kind {spec.kind!r} is not one of {[k.value for k in DataKind]}")
