"""How far an accuracy, or the difference between two models' accuracies, can be trusted.

A val split of a few hundred images resolves a couple of points at best: on 175 images one image
is 0.57 points, and a top-1 near 90% has a standard error of about 2.3 points. Two models scored
on the same images are compared pairwise, image by image, which is much tighter than comparing
the two percentages: only the images on which they disagree carry information.

    wilson(k, n)                      score interval of one top-1 (Wilson, 1927)
    paired_difference(a, b)           interval of top-1(a) - top-1(b) on the same images
                                      (Newcombe, Stat Med 1998, "paired data", method 10)
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LEVEL = 0.95


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (as fractions)."""
    if n <= 0:
        raise ValueError(f"an accuracy interval needs at least one image, got {n}")
    z, p = _z(level), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _phi(both: int, a_only: int, b_only: int, neither: int) -> float:
    """Correlation of the two models' correctness over the images (0 when a margin is empty)."""
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    return (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0


def paired_difference(a_correct, b_correct, level: float = LEVEL) -> dict:
    """top-1(a) - top-1(b) in points with its interval, from per-image correctness of two
    models on the same images, and how many images each alone gets right.

    verdict: "higher" or "lower" when the interval excludes 0, else "within noise"."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a paired accuracy comparison needs both models' results on the same "
                         f"images; got {a.shape} and {b.shape}")
    n = a.size
    both, a_only = int(np.sum(a & b)), int(np.sum(a & ~b))
    b_only, neither = int(np.sum(~a & b)), n - int(np.sum(a | b))
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson(both + a_only, n, level), wilson(both + b_only, n, level)
    phi = _phi(both, a_only, b_only, neither)
    d = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    low, high = max(-1.0, d - below), min(1.0, d + above)
    verdict = "higher" if low > 0 else "lower" if high < 0 else "within noise"
    return {"points": round(100 * d, 4), "low": round(100 * low, 4), "high": round(100 * high, 4),
            "level": level, "images": n, "a_only": a_only, "b_only": b_only, "verdict": verdict}


def interval_text(diff: dict) -> str:
    """'[95% CI -5.1, -0.6] on 175 val images'."""
    return (f"[{diff['level']:.0%} CI {diff['low']:+.1f}, {diff['high']:+.1f}] "
            f"on {diff['images']} val images")


def describe(diff: dict, a: str, b: str) -> str:
    """'+1.71 points [95% CI -0.6, +4.0] on 175 val images, within the noise (5 images right
    only for a, 2 only for b)'."""
    noise = "within the noise" if diff["verdict"] == "within noise" else "beyond the noise"
    return (f"{diff['points']:+.2f} points {interval_text(diff)}, {noise} ({diff['a_only']} images "
            f"right only for {a}, {diff['b_only']} only for {b})")
