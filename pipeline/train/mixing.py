"""Mixup and cutmix: batch-level augmentation that mixes images and their labels alike.

For distillation the teacher scores the mixed image too, so student and teacher are matched on
points between training images as well: the "function matching" that makes a patient teacher
pay off on small datasets (Beyer et al., CVPR 2022).
"""
from __future__ import annotations

import math
import random
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.config import Augment
from pipeline.data.imageset import derive_seed


class Mixer:
    """Mixes each batch with a shuffled copy of itself; the draws depend on (seed, step) only,
    so every rank of a distributed run and every re-run mixes alike."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int, seed: int):
        self.mixup, self.cutmix, self.num_classes, self.seed = mixup, cutmix, num_classes, seed

    @classmethod
    def from_augment(cls, aug: Augment, num_classes: int, seed: int) -> Optional["Mixer"]:
        """A mixer for these settings, or None when both mixup and cutmix are off."""
        if aug.mixup <= 0 and aug.cutmix <= 0:
            return None
        return cls(aug.mixup, aug.cutmix, num_classes, seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets [B, classes]) for batch number `step`."""
        seed = derive_seed("mix", self.seed, step)
        rng = random.Random(seed)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = rng.betavariate(alpha, alpha)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed % 2**63)).to(x.device)
        if use_cutmix:
            x, lam = _paste_box(x, perm, lam, rng)
        else:
            x = lam * x + (1 - lam) * x[perm]
        one_hot = F.one_hot(y, self.num_classes).to(torch.float32)
        return x, lam * one_hot + (1 - lam) * one_hot[perm]


def _paste_box(x: torch.Tensor, perm: torch.Tensor, lam: float, rng: random.Random):
    """Cutmix: a box of (1 - lam) of the area from the shuffled batch; returns the area share kept."""
    h, w = x.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = rng.randrange(h), rng.randrange(w)
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    return x, 1 - (bottom - top) * (right - left) / (h * w)
