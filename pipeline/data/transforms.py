"""Image -> tensor transforms. Eval is the model's own `Preprocessing`; training adds seeded augmentation.

The random draws for sample i in epoch e come from a generator seeded by (seed, e, i), so an
augmented image does not depend on worker count, process rank or the order samples are read:
every rank of a distributed run, and every re-run, sees the same pixels for the same (e, i).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

from calibration.preprocess import Preprocessing
from pipeline.config import Augment
from pipeline.data.imageset import derive_seed

_RATIO = (3 / 4, 4 / 3)   # aspect-ratio range of RandomResizedCrop, as in torchvision and timm


def eval_transform(pre: Preprocessing) -> Callable[[object], np.ndarray]:
    """The eval transform is the model's preprocessing itself: one definition everywhere."""
    return pre.__call__


def crop_box(rng: random.Random, width: int, height: int,
             scale: tuple[float, float]) -> tuple[float, float, float, float]:
    """A RandomResizedCrop box (left, top, right, bottom) in float pixels.

    Ten tries at an area in `scale` and an aspect ratio log-uniform in 3/4..4/3, then a centre
    crop. Boxes are not rounded to whole pixels, so tiny images (8x8 digits) still get a
    continuous range of crops.
    """
    area = width * height
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    aspect = width / height
    if aspect < _RATIO[0]:
        w, h = width, width / _RATIO[0]
    elif aspect > _RATIO[1]:
        w, h = height * _RATIO[1], height
    else:
        w, h = width, height
    return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)


def _border_colour(image) -> tuple[int, int, int]:
    """Mean colour of the outermost pixels: what a rotation fills its corners with."""
    arr = np.asarray(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(round(v)) for v in border.mean(axis=0))


def _shift_hue(image, shift: float):
    from PIL import Image
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.frombytes("HSV", image.size, np.ascontiguousarray(hsv).tobytes()).convert("RGB")


def _jitter(image, rng: random.Random, strength: float):
    """Brightness, contrast and saturation by factors in [1-s, 1+s], hue by up to s/4 of a turn,
    applied in a random order."""
    from PIL import ImageEnhance
    lo, hi = max(0.0, 1 - strength), 1 + strength
    ops = [("brightness", rng.uniform(lo, hi)), ("contrast", rng.uniform(lo, hi)),
           ("saturation", rng.uniform(lo, hi)), ("hue", rng.uniform(-strength / 4, strength / 4))]
    rng.shuffle(ops)
    for name, value in ops:
        if name == "brightness":
            image = ImageEnhance.Brightness(image).enhance(value)
        elif name == "contrast":
            image = ImageEnhance.Contrast(image).enhance(value)
        elif name == "saturation":
            image = ImageEnhance.Color(image).enhance(value)
        else:
            image = _shift_hue(image, value)
    return image


@dataclass(frozen=True)
class TrainTransform:
    """Seeded augmentation per `Augment`, then the model's normalisation.

    Order: random resized crop to the model's input size (or the eval resize + centre crop
    when disabled), horizontal flip, rotation (corners filled with the border colour),
    colour jitter, `Preprocessing.normalize`.
    """

    pre: Preprocessing
    augment: Augment
    seed: int

    def rng(self, epoch: int, index: int) -> random.Random:
        """The generator of sample `index` in `epoch`: a function of (seed, epoch, index) only."""
        return random.Random(derive_seed("augment", self.seed, epoch, index))

    def augment_image(self, image, epoch: int, index: int):
        """The augmented PIL image (RGB, input_size x input_size) of sample `index` in `epoch`."""
        from PIL import Image, ImageOps
        rng, aug, size = self.rng(epoch, index), self.augment, self.pre.input_size
        image = image.convert("RGB")
        if aug.random_resized_crop is not None:
            box = crop_box(rng, image.width, image.height, tuple(aug.random_resized_crop))
            resample = Image.Resampling[self.pre.interpolation.upper()]
            image = image.resize((size, size), resample=resample, box=box)
        else:
            image = self.pre.resize_then_crop(image)
        if aug.hflip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if aug.rotation_deg > 0:
            angle = rng.uniform(-aug.rotation_deg, aug.rotation_deg)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR,
                                 fillcolor=_border_colour(image))
        if aug.color_jitter > 0:
            image = _jitter(image, rng, aug.color_jitter)
        return image

    def __call__(self, image, epoch: int, index: int) -> np.ndarray:
        """Float32 CHW array of the augmented, normalised sample."""
        return self.pre.normalize(self.augment_image(image, epoch, index))
