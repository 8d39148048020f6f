"""The data layer's shared vocabulary: an image set, the train/val splits, errors and seeding.

Every source (ImageFolder tree, scikit-learn digits, rendered digits) produces the same
`ImageSet`: stable ids, integer targets, class names and `image(i) -> PIL RGB`. Training,
calibration and evaluation only ever see this shape.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.hashing import sha256_json
from runtimes import errors


class DataError(ValueError, errors.DataError):
    """A dataset that cannot be used as configured; the message names the path and the fix."""


class DataWarning(UserWarning):
    """Something was dropped or adjusted while loading data (e.g. unreadable images skipped)."""


def derive_seed(*parts) -> int:
    """A 64-bit seed from any tuple of ints/strings, identical in every process.

    Python's `hash` is salted per process and `random.Random(tuple)` is refused, so seeds for
    per-sample generators are derived from a sha256 of the parts' text.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass
class ImageSet:
    """A labelled set of images addressed by position.

    `load(i)` returns the i-th image as PIL RGB; it must be picklable (a small object with
    `__call__`, not a lambda) so the set can travel to data-loader worker processes.
    `fingerprint` is a content hash of this split (ids, targets and image content).
    """

    ids: list[str]
    targets: list[int]
    classes: list[str]
    load: Callable[[int], object]
    fingerprint: str

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.targets):
            raise DataError(f"image set has {len(self.ids)} ids but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int):
        """The i-th image as a PIL.Image.Image in RGB mode."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is out of range for a set of {len(self)}")
        return self.load(i % len(self))

    def class_counts(self) -> dict[str, int]:
        """Images per class name, in class order (zero for classes without images)."""
        counts = [0] * len(self.classes)
        for t in self.targets:
            counts[t] += 1
        return dict(zip(self.classes, counts))

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at `indices`, in that order (e.g. a quick run on part of the data)."""
        indices = [int(i) for i in indices]
        return ImageSet(ids=[self.ids[i] for i in indices],
                        targets=[self.targets[i] for i in indices],
                        classes=list(self.classes),
                        load=_Subset(self.load, indices),
                        fingerprint=sha256_json({"parent": self.fingerprint, "indices": indices}))


@dataclass(frozen=True)
class _Subset:
    parent: Callable[[int], object]
    indices: list[int]

    def __call__(self, i: int):
        return self.parent(self.indices[i])


@dataclass
class Splits:
    """Train and val image sets over one class list, with a fingerprint of the whole dataset.

    `fingerprint` hashes the content-defining spec fields, every id and target, and the image
    content, so any cache keyed on it changes when the data changes. `skipped` lists the ids of
    unreadable images dropped under `data.skip_corrupt`, `excluded` those left out by
    `data.exclude`; `audit` is the data audit's record
    (`pipeline.data.audit`), None for the built-in datasets.
    """

    train: ImageSet
    val: ImageSet
    classes: list[str]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)
    audit: dict | None = None
    excluded: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Counts for manifests and reports."""
        return {"classes": list(self.classes),
                "train": len(self.train), "val": len(self.val),
                "train_per_class": self.train.class_counts(),
                "val_per_class": self.val.class_counts(),
                "skipped": list(self.skipped),
                "fingerprint": self.fingerprint}


def split_fingerprint(ids: Sequence[str], targets: Sequence[int], content: object) -> str:
    """Content hash of one split: its ids, targets and whatever defines the pixels."""
    return sha256_json({"ids": list(ids), "targets": [int(t) for t in targets], "content": content})


def stratified_split(targets: Sequence[int], val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) positions of a class-stratified split with a fixed seed.

    The seed is fixed on purpose: the held-out set must be the same for every run seed, or
    accuracies of differently seeded runs would be measured on different images.
    """
    from sklearn.model_selection import train_test_split
    positions = list(range(len(targets)))
    train, val = train_test_split(positions, test_size=val_fraction, stratify=list(targets),
                                  random_state=0)
    return sorted(int(i) for i in train), sorted(int(i) for i in val)
