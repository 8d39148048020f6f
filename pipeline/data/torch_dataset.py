"""Torch datasets over image sets: (float32 CHW tensor, int target), or images alone for a target domain."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from calibration.preprocess import Preprocessing
from pipeline.config import Augment
from pipeline.data.imageset import ImageSet
from pipeline.data.transforms import TrainTransform


class TorchImageSet(torch.utils.data.Dataset):
    """An `ImageSet` at a model's preprocessing, optionally augmented.

    With `augment`, sample i of epoch e is augmented from a generator seeded by (seed, e, i);
    call `set_epoch(e)` before each epoch. Workers see the epoch because the training loop's
    loaders create their workers per epoch (with `persistent_workers=True` they would keep
    the epoch they started with).

    Without `augment` (eval), the resized and centre-cropped pixels are cached as uint8
    (a quarter of float32) up to `cache_mb`, so later epochs skip decoding and resizing; the
    tensor is still exactly `Preprocessing(image)`. With `augment`, the decoded images are
    cached instead (see `_source`). Call `preload()` before creating worker processes to share
    one filled cache with all of them.
    """

    def __init__(self, images: ImageSet, preprocessing: Preprocessing, augment: Optional[Augment] = None,
                 seed: int = 0, cache: Optional[bool] = None, cache_mb: float = 2048):
        self.images, self.preprocessing, self.augment, self.seed = images, preprocessing, augment, seed
        self.cache = True if cache is None else bool(cache)
        self.cache_bytes = int(cache_mb * 2**20)
        self.epoch = 0
        self._transform = TrainTransform(preprocessing, augment, seed) if augment is not None else None
        self._pixels: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    @property
    def targets(self) -> list[int]:
        return self.images.targets

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws `__getitem__` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def _eval_pixels(self, i: int) -> np.ndarray:
        if i in self._pixels:
            return self._pixels[i]
        pixels = np.asarray(self.preprocessing.resize_then_crop(self.images.image(i)), dtype=np.uint8)
        if self.cache and self._cached_bytes + pixels.nbytes <= self.cache_bytes:
            self._pixels[i] = pixels
            self._cached_bytes += pixels.nbytes
        return pixels

    def _source(self, i: int):
        """The decoded training image, reduced to at most twice the resolution any crop needs.

        Decoding a photo costs about as much as a small model's forward pass, every epoch, so
        decoded images are kept (up to `cache_mb`). The reduction depends on the image and the
        input size only, never on what the cache holds, so pixels are the same either way."""
        if i in self._pixels:
            return self._pixels[i]
        image = self.images.image(i)
        needed = 2 * self.preprocessing.input_size / self.preprocessing.crop_pct
        factor = int(min(image.size) // needed)
        if factor >= 2:      # Image.reduce: box filter by a whole factor, fast and alias-free
            image = image.reduce(factor)
        nbytes = image.width * image.height * len(image.getbands())
        if self.cache and self._cached_bytes + nbytes <= self.cache_bytes:
            self._pixels[i] = image
            self._cached_bytes += nbytes
        return image

    def array(self, i: int) -> np.ndarray:
        """Float32 CHW array of sample i (augmented for the current epoch when training)."""
        i = range(len(self))[i]   # canonical non-negative index: seeds depend on it
        if self._transform is not None:
            return self._transform(self._source(i), self.epoch, i)
        return self.preprocessing.normalize(self._eval_pixels(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.array(i)), int(self.images.targets[i])

    def preload(self) -> "TorchImageSet":
        """Fill the cache now (in this process), up to `cache_mb`."""
        if self.cache:
            fill = self._eval_pixels if self._transform is None else self._source
            for i in range(len(self)):
                if self._cached_bytes >= self.cache_bytes:
                    break
                fill(i)
        return self

    def unlabelled(self) -> "UnlabelledSet":
        """This set as an unlabelled target domain (images only)."""
        return UnlabelledSet(self)


def endless_batches(dataset, batch_size: int, seed: int):
    """Batches of `dataset` forever: reshuffled (seeded) and, for augmented sets, redrawn each pass."""
    from pipeline.data.imageset import derive_seed
    passes = 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(passes)
        order = torch.Generator().manual_seed(derive_seed("unlabelled", seed, passes) % 2**63)
        yield from torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)),
                                               shuffle=True, generator=order, drop_last=True)
        passes += 1


class UnlabelledSet(torch.utils.data.Dataset):
    """Images of a labelled set with the labels withheld: a domain-adaptation target.

    `__getitem__` returns only the image tensor, and the view exposes no targets, so a
    training loop cannot learn from target labels by accident.
    """

    def __init__(self, dataset: TorchImageSet):
        self._dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self._dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._dataset.array(i))
