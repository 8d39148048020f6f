"""Calibration sources: a seeded, class-stratified sample of a dataset, preprocessed like the model.

A `CalibrationSource` has the shape `nncf.Dataset` wants (`data` + `transform`) and a
fingerprint that changes whenever the sample or the preprocessing changes, so quantized
artifacts and cached calibration tensors are keyed on what actually went into them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from calibration.preprocess import Preprocessing


@runtime_checkable
class ImageSet(Protocol):
    """What a dataset offers calibration: stable ids, integer targets, and images by position."""

    ids: list[str]
    targets: list[int]

    def image(self, i: int):
        """The i-th image as a PIL.Image.Image."""
        ...


def stratified_allocation(class_sizes: dict[int, int], size: int, rng: np.random.Generator) -> dict[int, int]:
    """How many samples each class gets: proportional (largest remainder), at least one per
    class when `size` allows, never more than the class holds."""
    total = sum(class_sizes.values())
    classes = sorted(class_sizes)
    quota = {c: size * class_sizes[c] / total for c in classes}
    floor_one = 1 if size >= len(classes) else 0
    alloc = {c: min(class_sizes[c], max(floor_one, int(np.floor(quota[c])))) for c in classes}
    # A seeded tie-break order, so equal remainders do not always favour low labels.
    tie = {c: r for c, r in zip(classes, rng.permutation(len(classes)))}
    while sum(alloc.values()) > size:  # only possible after the at-least-one floor
        over = [c for c in classes if alloc[c] > floor_one]
        c = max(over, key=lambda c: (alloc[c] - quota[c], tie[c]))
        alloc[c] -= 1
    while sum(alloc.values()) < size:
        room = [c for c in classes if alloc[c] < class_sizes[c]]
        c = max(room, key=lambda c: (quota[c] - alloc[c], tie[c]))
        alloc[c] += 1
    return alloc


def stratified_sample(ids: Sequence[str], targets: Sequence[int], size: int, seed: int) -> list[int]:
    """Positions of a seeded, class-stratified sample of `size` items, in a seeded mixed order.

    Members of each class are ordered by id before shuffling, so the sample depends on the ids
    and the seed only, not on listing order or PYTHONHASHSEED.
    """
    n = len(ids)
    if len(targets) != n:
        raise ValueError(f"image set has {n} ids but {len(targets)} targets; they must pair up one to one")
    if not 1 <= size <= n:
        raise ValueError(
            f"calibration size {size} is outside 1..{n} (the image set has {n} images); "
            f"set calibration size to at most {n} or add images"
        )
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for pos, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(pos)
    alloc = stratified_allocation({c: len(v) for c, v in by_class.items()}, size, rng)
    chosen: list[int] = []
    for c in sorted(by_class):
        members = sorted(by_class[c], key=lambda p: ids[p])
        order = rng.permutation(len(members))[: alloc[c]]
        chosen.extend(members[k] for k in order)
    return [chosen[k] for k in rng.permutation(len(chosen))]


class CalibrationSource:
    """A fixed calibration sample: `data` (positions in the image set) + `transform` (position ->
    NCHW float32 batch of one), a `fingerprint`, and all tensors at once through `tensors()`."""

    def __init__(
        self,
        images: ImageSet,
        preprocessing: Preprocessing,
        positions: Sequence[int],
        seed: int,
        size: int,
        cache_dir: Path | None = None,
    ):
        self.images = images
        self.preprocessing = preprocessing
        self.data: list[int] = list(positions)
        self.seed = seed
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_hit: bool | None = None  # set by tensors() when a cache_dir is used
        self._tensors: np.ndarray | None = None
        self._row = {p: k for k, p in enumerate(self.data)}

    @classmethod
    def from_imageset(
        cls,
        images: ImageSet,
        preprocessing: Preprocessing,
        size: int = 300,
        seed: int = 0,
        cache_dir: Path | str | None = None,
    ) -> "CalibrationSource":
        """Sample `size` images (seeded, class-stratified) to be preprocessed by `preprocessing`.

        With `cache_dir`, `tensors()` keeps the preprocessed batch at `<cache_dir>/<fingerprint>.npy`.
        """
        positions = stratified_sample(images.ids, images.targets, size, seed)
        return cls(images, preprocessing, positions, seed, size, Path(cache_dir) if cache_dir else None)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def ids(self) -> list[str]:
        """The ids of the sampled images, in sample order."""
        return [self.images.ids[p] for p in self.data]

    @property
    def fingerprint(self) -> str:
        """sha256 over the sampled ids in order, the seed, the size and the preprocessing."""
        payload = {
            "ids": self.ids,
            "seed": int(self.seed),
            "size": int(self.size),
            "preprocessing": self.preprocessing.to_dict(),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def transform(self, position: int) -> np.ndarray:
        """One sampled image, by its position in the image set, as a (1, 3, H, W) float32 array."""
        if self._tensors is not None and position in self._row:
            return self._tensors[self._row[position]][None]
        return self.preprocessing(self.images.image(position))[None].astype(np.float32)

    def tensors(self) -> np.ndarray:
        """All sampled images as one (N, 3, H, W) float32 array (kept in memory, and on disk with a cache_dir)."""
        if self._tensors is None:
            if self.cache_dir is None:
                self._tensors = self._build()
            else:
                from calibration.cache import load_or_build

                self._tensors, self.cache_hit = load_or_build(self.cache_dir, self.fingerprint, self._build)
        return self._tensors

    def _build(self) -> np.ndarray:
        h = w = self.preprocessing.input_size
        out = np.empty((len(self.data), 3, h, w), dtype=np.float32)
        for k, p in enumerate(self.data):
            out[k] = self.preprocessing(self.images.image(p))
        return out
