"""The UCI handwritten digits that scikit-learn ships: 1,797 real 8x8 images, offline.

Pixels hold ink counts 0..16; they become gray levels value*255/16 (ink bright on dark),
replicated to RGB. The train/val split is stratified with a fixed seed, so it never changes
with the run seed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipeline.config import DataSpec
from pipeline.data.imageset import ImageSet, Splits, split_fingerprint, stratified_split
from pipeline.hashing import sha256_json

CLASSES = [str(d) for d in range(10)]


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8], targets int [N]) of scikit-learn's digits, as gray levels."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    gray = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return gray, bunch.target.astype(np.int64)


@dataclass(frozen=True)
class DigitsImages:
    """Builds the RGB PIL image of one digit from the gray array (cheap: 8x8 pixels)."""

    gray: np.ndarray        # [n, 8, 8] uint8, already restricted to one split

    def __call__(self, i: int):
        from PIL import Image
        return Image.fromarray(np.repeat(self.gray[i][:, :, None], 3, axis=2))


def load_digits_splits(spec: DataSpec) -> Splits:
    """scikit-learn digits as train/val image sets (classes "0".."9")."""
    gray, targets = digits_pixels()
    content = hashlib.sha256(gray.tobytes() + targets.tobytes()).hexdigest()
    train_pos, val_pos = stratified_split(targets.tolist(), spec.val_fraction)

    def make(split: str, pos: list[int]) -> ImageSet:
        ids = [f"digits:{split}:{i}" for i in pos]   # i: the position in scikit-learn's array
        tgts = [int(targets[i]) for i in pos]
        return ImageSet(ids=ids, targets=tgts, classes=list(CLASSES),
                        load=DigitsImages(np.ascontiguousarray(gray[pos])),
                        fingerprint=split_fingerprint(ids, tgts, content))

    train, val = make("train", train_pos), make("val", val_pos)
    fingerprint = sha256_json({"kind": spec.kind.value, "val_fraction": spec.val_fraction,
                               "content": content, "train": train.fingerprint, "val": val.fingerprint})
    return Splits(train=train, val=val, classes=list(CLASSES), fingerprint=fingerprint)
