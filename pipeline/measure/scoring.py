"""Val images at an artifact's preprocessing, logits in chunks, top-1 accuracy and agreement.

Every artifact is scored on the same images with its own preprocessing metadata, in the runtime
and on the device it is measured on: accuracy is a property of (artifact, runtime, device),
not of the model in the abstract (an int8 kernel or a bf16 default changes it).
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from calibration.preprocess import Preprocessing
from pipeline.data.imageset import ImageSet

CACHE_LIMIT_BYTES = 1 << 30   # preprocessed val sets up to 1 GiB stay in memory between artifacts


def _key(pre: Preprocessing) -> str:
    # Precision is a label of the artifact, not of the pixels: fp32 and int8 share the input.
    return json.dumps(pre.with_(precision="fp32").to_dict(), sort_keys=True)


class ValImages:
    """The (first `limit`) val images, turned into NCHW float32 inputs per preprocessing."""

    def __init__(self, images: ImageSet, limit: int | None = None):
        n = len(images) if limit is None else min(limit, len(images))
        if n == 0:
            raise ValueError("the val split is empty: the benchmark scores accuracy on val images; "
                             "check data.val_fraction or the val/ folder of data.root")
        self.images, self.count = images, n
        self.targets = np.asarray(images.targets[:n], dtype=np.int64)
        self._cache: dict[str, np.ndarray] = {}

    def _preprocess(self, pre: Preprocessing, start: int, stop: int) -> np.ndarray:
        return np.stack([pre(self.images.image(i)) for i in range(start, stop)]).astype(np.float32)

    def chunks(self, pre: Preprocessing, size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of `size` images (the last one may be shorter)."""
        key = _key(pre)
        if key not in self._cache and self.count * 4 * int(np.prod(pre.input_shape(1))) <= CACHE_LIMIT_BYTES:
            self._cache[key] = self._preprocess(pre, 0, self.count)
        for start in range(0, self.count, size):
            stop = min(start + size, self.count)
            yield (self._cache[key][start:stop] if key in self._cache
                   else self._preprocess(pre, start, stop))

    def batch(self, pre: Preprocessing, size: int) -> np.ndarray:
        """The first `size` val images as one batch (repeated when the split has fewer)."""
        first = next(self.chunks(pre, min(size, self.count)))
        reps = -(-size // len(first))
        return np.ascontiguousarray(np.concatenate([first] * reps)[:size])

    @property
    def fingerprint(self) -> str:
        return self.images.fingerprint


def predict(loaded, val: ValImages, pre: Preprocessing, chunk: int) -> np.ndarray:
    """Logits of every scored val image from a model loaded by `runtimes.execution.open_model`,
    `chunk` images per call (a model with a static batch gets exactly its batch per call)."""
    out = []
    for x in val.chunks(pre, chunk):
        out.append(np.asarray(loaded.run(x)))
        loaded.sync()
    return np.concatenate(out).astype(np.float32)


def top1(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Percent of images whose predicted class is the label."""
    return float(100.0 * np.mean(np.asarray(predictions) == np.asarray(targets)))


def agreement(predictions: np.ndarray, reference: np.ndarray | None) -> float | None:
    """Percent of images on which two models predict the same class (None without a reference)."""
    if reference is None:
        return None
    if len(predictions) != len(reference):
        raise ValueError(f"agreement needs predictions of the same images; got {len(predictions)} "
                         f"and {len(reference)}")
    return float(100.0 * np.mean(np.asarray(predictions) == np.asarray(reference)))
