"""The model's preprocessing contract, carried by every artifact.

Calibration, runtimes, benchmarks and deployment bundles all preprocess through this one
description, so an image is turned into the same tensor wherever the model is scored.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

_PIL_INTERPOLATION = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor (NCHW, float32)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    labels: tuple[str, ...] = field(default_factory=tuple)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(
                f"preprocessing.interpolation {self.interpolation!r} is not one of "
                f"{sorted(_PIL_INTERPOLATION)}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"preprocessing.crop_pct {self.crop_pct} must be in (0, 1]")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"], out["labels"] = list(self.mean), list(self.std), list(self.labels)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 1.0)),
            labels=tuple(d.get("labels", ())),
            precision=d.get("precision", "fp32"),
        )

    def with_(self, **changes) -> "Preprocessing":
        return Preprocessing.from_dict({**self.to_dict(), **changes})

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, 3, self.input_size, self.input_size)

    def resize_then_crop(self, image):
        """Resize the short side to input_size / crop_pct, then centre-crop input_size (PIL in, PIL out)."""
        image = image.convert("RGB")
        size = self.input_size
        scaled = int(round(size / self.crop_pct))
        w, h = image.size
        if w <= h:
            new_w, new_h = scaled, max(scaled, int(round(h * scaled / w)))
        else:
            new_w, new_h = max(scaled, int(round(w * scaled / h))), scaled
        image = image.resize((new_w, new_h), resample=_PIL_INTERPOLATION[self.interpolation])
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return image.crop((left, top, left + size, top + size))

    def normalize(self, image) -> np.ndarray:
        """PIL RGB image of input_size -> float32 CHW array, normalised by mean/std."""
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, image) -> np.ndarray:
        """The full eval transform: PIL image -> float32 CHW array."""
        return self.normalize(self.resize_then_crop(image))


def stack(images: Sequence, pre: Preprocessing) -> np.ndarray:
    """Preprocess a list of PIL images into one NCHW float32 batch."""
    return np.stack([pre(img) for img in images]).astype(np.float32)
