"""Images whose label the frozen features confidently disagree with: likely mislabels, ranked for
a person to look at, from the features the linear probe computes anyway (no second pass over
the images).

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021): every image is predicted by a probe
that never saw it (out-of-fold: `FOLDS` folds, stratified by label, over train and val pooled, so
each probe learns from 80% of every labelled image there is). A class's threshold is its mean
self-confidence: the mean out-of-fold probability of class j over the images labelled j. An image
labelled y is a suspect when some other class j reaches j's threshold and is the most probable of
the classes that reach theirs; suspects are ranked by margin, p(j) - p(y). Per-class thresholds
matter: a class the features separate poorly has low self-confidence everywhere, and one fixed
cut-off would flag half of it.

Pooling the splits: val alone has a few dozen images per class, too few for a probe to learn from
in each fold; a val image's label is checked against every training image as much as a training
image's is. Nothing is removed: `data.exclude` leaves out what a person decided is wrong.
"""
from __future__ import annotations

import numpy as np

FOLDS = 5
LISTED = 20          # suspects kept in the record, the largest margins first


def fold_of(labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each image's fold, dealt round-robin within its class after a seeded shuffle, so every fold
    holds about the same share of every class."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        out[members] = np.arange(len(members)) % folds
    return out


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, classes: int, l2: float,
                              folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """[N, classes] softmax of a logistic probe fitted without the image's own fold, on features
    standardised with the fitting folds' statistics (as `fit_probe` does)."""
    import torch
    from pipeline.train.logistic import fit_logistic
    fold = fold_of(y, folds, seed)
    probs = np.zeros((len(y), classes))
    xs, ys = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    # One thread: these fits are thousands of small products, where threads cost more than they
    # give (flowers5's 525 images: 1.2 s on one thread, 13 to 27 s on two of a busy 2-core host).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = None  # folds share most of their images: each fit starts from the last one's optimum
    try:
        for k in range(folds):
            held = torch.as_tensor(fold == k)
            if not held.any():
                continue
            fit_x, fit_y = xs[~held], ys[~held]
            mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-6)
            w, b = previous = fit_logistic((fit_x - mean) / std, fit_y, classes, l2, previous)
            logits = ((xs[held] - mean) / std) @ w.T + b
            probs[held.numpy()] = torch.softmax(logits, 1).numpy()
    finally:
        torch.set_num_threads(threads)
    return probs


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the images labelled with it (1.0 for a
    class no image carries, so it is never predicted against a label)."""
    out = np.ones(probs.shape[1])
    for c in range(probs.shape[1]):
        mine = labels == c
        if mine.any():
            out[c] = probs[mine, c].mean()
    return out


def confident_suspects(probs: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float, float]]:
    """[(image index, predicted class, its probability, margin over the given label)] of images
    whose most probable class among those at or above their threshold is not their label,
    the largest margins first."""
    labels = np.asarray(labels)
    reached = probs >= class_thresholds(probs, labels)[None, :]
    masked = np.where(reached, probs, -1.0)
    predicted = masked.argmax(axis=1)
    rows = np.arange(len(labels))
    suspect = reached.any(axis=1) & (predicted != labels)
    margin = probs[rows, predicted] - probs[rows, labels]
    order = [int(i) for i in np.argsort(-margin, kind="stable") if suspect[i]]
    return [(i, int(predicted[i]), float(probs[i, predicted[i]]), float(margin[i])) for i in order]


def likely_mislabels(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                     ids: tuple[list[str], list[str]], classes: list[str], l2: float,
                     listed: int = LISTED, seed: int = 0) -> dict:
    """The record: how the suspects were found, how many there are, and the first `listed`
    as [{path, label, predicted, confidence, margin}] (confidence: the out-of-fold probability
    of the predicted class)."""
    x = np.concatenate([train[0], val[0]])
    y = np.concatenate([train[1], val[1]]).astype(np.int64)
    paths = list(ids[0]) + list(ids[1])
    probs = out_of_fold_probabilities(x, y, len(classes), l2, FOLDS, seed)
    found = confident_suspects(probs, y)
    return {"method": f"confident learning, {FOLDS}-fold out-of-fold linear probe (l2 {l2:g}) on "
                      f"train and val pooled; thresholds: each class's mean self-confidence",
            "thresholds": {c: round(float(t), 4) for c, t in zip(classes, class_thresholds(probs, y))},
            "count": len(found),
            "suspects": [{"path": paths[i], "label": classes[y[i]], "predicted": classes[j],
                          "confidence": round(p, 4), "margin": round(m, 4)}
                         for i, j, p, m in found[:listed]]}
