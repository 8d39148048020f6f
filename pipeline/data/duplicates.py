"""Copies of one image inside a dataset, found from what the scan records for every file.

Exact copies share their decoded pixels (`perceptual.pixel_digest`), whether or not their bytes
match; near copies (recompressed, resized, recoloured) have perceptual hashes within a few bits
of each other. Each group of exact copies is sorted into what it means for training:

- leak: the picture is in train and in val, so val scores an image the model learnt;
- conflict: the picture carries two labels, so one of them is wrong for it;
- repeat: the picture is in one split under one label more than once (it weighs double).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.data.perceptual import as_uint64, close_pairs


class Scanned(NamedTuple):
    """One readable image as the scan saw it."""

    split: str
    rel: str              # path under data.root
    label: str
    sha256: str           # of the file's bytes
    pixels: str           # of the decoded RGB pixels
    phash: str            # 64-bit perceptual hash, hex


@dataclass
class Copies:
    """Images with identical pixels (two or more)."""

    images: list[Scanned]

    @property
    def same_bytes(self) -> bool:
        return len({i.sha256 for i in self.images}) == 1

    @property
    def leak(self) -> bool:
        return len({i.split for i in self.images}) > 1

    @property
    def conflict(self) -> bool:
        return len({i.label for i in self.images}) > 1

    @property
    def repeat(self) -> bool:
        return not self.leak and not self.conflict

    def to_dict(self) -> dict:
        return {"images": [f"{i.rel}" for i in self.images], "labels": sorted({i.label for i in self.images}),
                "same_bytes": self.same_bytes, "leak": self.leak, "conflict": self.conflict}


@dataclass(frozen=True)
class NearPair:
    """A val image and a training image whose perceptual hashes differ in `bits` of 64."""

    val: Scanned
    train: Scanned
    bits: int

    def to_dict(self) -> dict:
        return {"val": self.val.rel, "train": self.train.rel, "bits": self.bits,
                "same_label": self.val.label == self.train.label}


def exact_copies(images: list[Scanned]) -> list[Copies]:
    """Every group of images with identical pixels, in path order."""
    by_pixels: dict[str, list[Scanned]] = defaultdict(list)
    for image in images:
        by_pixels[image.pixels].append(image)
    groups = [Copies(sorted(g, key=lambda i: (i.split != "train", i.rel)))
              for g in by_pixels.values() if len(g) > 1]
    return sorted(groups, key=lambda g: g.images[0].rel)


def near_copies(images: list[Scanned], max_bits: int) -> list[NearPair]:
    """Val images whose perceptual hash is within `max_bits` of a training image's, leaving out
    exact copies (those are leaks already); closest first."""
    train = [i for i in images if i.split == "train"]
    val = [i for i in images if i.split == "val"]
    if not train or not val:
        return []
    pairs = close_pairs(as_uint64([i.phash for i in val]), as_uint64([i.phash for i in train]), max_bits)
    found = [NearPair(val[a], train[b], bits) for a, b, bits in pairs
             if val[a].pixels != train[b].pixels]
    return sorted(found, key=lambda p: (p.bits, p.val.rel, p.train.rel))
