"""The per-class view: images per class and split, and the teacher's and the deployed model's val
accuracy per class with their confusion matrices, from the predictions each benchmark row keeps.

One top-1 number hides a class the deployed model gave up on; and a class with few val images
moves in large steps: with n images, one image is 100/n points of that class's accuracy. When that
step is larger than benchmark.deploy_tolerance, the tolerance cannot be judged per class: a
warning says which classes and how many images each would need.
"""
from __future__ import annotations

import math

from pipeline.measure.artifacts import TEACHER
from pipeline.measure.targets import is_reference


def confusion(targets: list[int], predictions: list[int], classes: int) -> list[list[int]]:
    """[true class][predicted class] image counts."""
    out = [[0] * classes for _ in range(classes)]
    for t, p in zip(targets, predictions):
        out[t][p] += 1
    return out


def class_accuracy(matrix: list[list[int]]) -> list[float | None]:
    """Per true class, the share predicted right (%); None for a class with no val image."""
    return [100.0 * row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)]


def _model(row: dict, targets: list[int], classes: int) -> dict | None:
    preds = row.get("predictions")
    if not isinstance(preds, list) or len(preds) != len(targets):
        return None
    matrix = confusion(targets, preds, classes)
    return {"row": row["id"], "artifact": row["artifact"], "confusion": matrix,
            "accuracy": [None if a is None else round(a, 2) for a in class_accuracy(matrix)]}


def few_images_warning(val_counts: dict[str, int], tolerance: float) -> str | None:
    """The classes whose one val image is worth more than `tolerance` points of their accuracy."""
    coarse = {c: n for c, n in val_counts.items() if n and 100.0 / n > tolerance}
    if not coarse:
        return None
    shown = ", ".join(f"{c} ({n}: {100.0 / n:.1f} points each)" for c, n in coarse.items())
    need = math.ceil(100.0 / tolerance) if tolerance > 0 else None
    more = f"; a class needs {need}+ val images for that" if need else ""
    return (f"{len(coarse)} class(es) have so few val images that one image is worth more than "
            f"benchmark.deploy_tolerance ({tolerance:g} points) of that class's accuracy: {shown}; "
            f"per-class changes within the tolerance cannot be told apart{more}")


def per_class_view(rows: list[dict], val_labels: dict | None, class_counts: dict | None,
                   tolerance: float) -> dict | None:
    """{classes, counts {split: {class: n}}, teacher, deployed, warning}; None when the benchmark
    kept no labels (results from before per-image predictions were recorded)."""
    if not isinstance(val_labels, dict) or not val_labels.get("targets"):
        return None
    classes, targets = val_labels["classes"], val_labels["targets"]
    counts = dict(class_counts or {})
    scored = [0] * len(classes)
    for t in targets:
        scored[t] += 1
    counts["val scored"] = dict(zip(classes, scored))
    ok = [r for r in rows if r.get("status") == "ok"]
    teacher = next((r for r in ok if r["artifact"] == TEACHER and is_reference(r["runtime"], r["device"])), None)
    deployed = next((r for r in ok if r.get("deployed")), None)
    return {"classes": classes, "counts": counts,
            "teacher": _model(teacher, targets, len(classes)) if teacher else None,
            "deployed": _model(deployed, targets, len(classes)) if deployed else None,
            "warning": few_images_warning(counts["val scored"], tolerance)}


def per_class_table(view: dict) -> tuple[list[str], list[list]]:
    """(headers, lines): per class, its images per split and each model's val top-1."""
    splits = [s for s in ("train", "val", "val scored") if s in view["counts"]]
    models = [(k, view[k]) for k in ("teacher", "deployed") if view.get(k)]
    headers = ["class", *[f"{s} images" for s in splits],
               *[f"{k} val top-1 (%) ({m['artifact']})" for k, m in models]]
    lines = []
    for i, c in enumerate(view["classes"]):
        accs = [m["accuracy"][i] for _, m in models]
        lines.append([c, *[view["counts"][s].get(c, 0) for s in splits],
                      *["-" if a is None else f"{a:.1f}" for a in accs]])
    return headers, lines
