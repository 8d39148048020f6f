"""Val images that look like one particular training image: the same object or the same photo
session in both splits, found from the frozen features the linear probe computes anyway.

The perceptual hash of the data audit finds edited copies of one photo; it cannot see a second
shot of the same can from another angle, which leaks almost as much. Cosine similarity alone does
not separate those from two photos of the same kind of thing (a daisy is close to every daisy),
so each val image is scored by how much closer its nearest training image is than its next
`RUNNERS_UP` (the margin; Lowe's ratio test in another form). Features are centred on the mean of
both splits first, so what every image shares does not count.

Measured with EfficientNet-Lite2's ImageNet features at 224 px (configs/imagefolder.yaml): the
margin's 99th percentile was 0.35 on flowers5 and 0.32 on trashnet5. Above `MARGIN`, flowers5 has
one photo session (one model in one sunflower field) and two butterfly-on-dandelion photos that
are not the same shot; trashnet5 has three pairs from its shooting sessions (plain cardboard, a
plastic blister pack, lined notebook paper). At 260 px the same can shot twice also passed. The
pairs are listed for a person to look at, never refused.
"""
from __future__ import annotations

import numpy as np

MARGIN = 0.30        # nearest training image this much more similar than the runners-up
RUNNERS_UP = 5
LISTED = 20


def lookalikes(train: np.ndarray, val: np.ndarray, train_ids: list[str], val_ids: list[str],
               margin: float = MARGIN, listed: int = LISTED) -> list[dict]:
    """[{val, train, similarity, margin}] for val images whose nearest training image (cosine of
    centred features) stands out by at least `margin`, the largest margins first."""
    if len(train) < 2 or len(val) == 0:
        return []
    mean = np.concatenate([train, val]).mean(axis=0)
    t = _unit(train - mean)
    v = _unit(val - mean)
    sim = v @ t.T                                              # [val, train]
    k = min(RUNNERS_UP + 1, sim.shape[1])
    top = -np.sort(-sim, axis=1)[:, :k]
    nearest = sim.argmax(axis=1)
    gap = top[:, 0] - top[:, 1:].mean(axis=1)
    order = [i for i in np.argsort(-gap, kind="stable") if gap[i] >= margin][:listed]
    return [{"val": val_ids[i], "train": train_ids[int(nearest[i])],
             "similarity": round(float(top[i, 0]), 4), "margin": round(float(gap[i]), 4)}
            for i in order]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
