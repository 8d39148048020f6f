"""Pictures of the data audit's findings, for a person to judge at a glance: the likely mislabels
with their given label and the class the features saw, and each near copy or look-alike beside
the training image it resembles. Images are read from data.root when the report is built; one
that is gone since is left out of the picture.
"""
from __future__ import annotations

from pathlib import Path

SUSPECTS_SHOWN = 8
PAIRS_SHOWN = 4
COLUMNS = 4


def _open(root: Path, rel: str, size: int = 256):
    from PIL import Image, ImageOps
    try:
        with Image.open(root / rel) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size))
            return im
    except OSError:
        return None


def suspects_picture(audit: dict, data_root: str | Path) -> bytes | None:
    """The first likely mislabels, each titled with its label and the class the features saw."""
    import matplotlib.pyplot as plt
    from pipeline.render.png import png as _png
    root = Path(data_root).expanduser()
    shown = [(s, im) for s in ((audit.get("mislabels") or {}).get("suspects") or [])[:SUSPECTS_SHOWN]
             if (im := _open(root, s["path"])) is not None]
    if not shown:
        return None
    rows = -(-len(shown) // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(3.0 * COLUMNS, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (s, im) in zip(axes.flat, shown):
        ax.imshow(im)
        ax.set_title(f"labelled {s['label']}\nlooks {s['predicted']} ({s['confidence']:.2f})\n"
                     f"{Path(s['path']).name[:28]}", fontsize=8)
    fig.suptitle("Likely mislabels (out-of-fold frozen-feature probe; data.exclude leaves one out)",
                 fontsize=10)
    return _png(fig)


def pairs_picture(audit: dict, data_root: str | Path) -> bytes | None:
    """Near copies (perceptual hash) and look-alikes (frozen features): val image beside the
    training image it resembles."""
    import matplotlib.pyplot as plt
    from pipeline.render.png import png as _png
    root = Path(data_root).expanduser()
    pairs = [(p["val"], p["train"], f"near copy, {p['bits']} bits")
             for p in (audit.get("near") or {}).get("pairs") or []]
    pairs += [(p["val"], p["train"], f"look-alike, margin {p['margin']:.2f}")
              for p in audit.get("lookalikes") or []]
    shown = [(v, t, what, a, b) for v, t, what in pairs[:PAIRS_SHOWN]
             if (a := _open(root, v)) is not None and (b := _open(root, t)) is not None]
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 2, figsize=(6.0, 3.1 * len(shown)), squeeze=False)
    for (v, t, what, a, b), (left, right) in zip(shown, axes):
        for ax, im, rel in ((left, a, v), (right, b, t)):
            ax.imshow(im)
            ax.axis("off")
            ax.set_title(rel if len(rel) <= 40 else "..." + rel[-37:], fontsize=7.5)
        left.text(1.05, -0.06, what, transform=left.transAxes, ha="center", va="top", fontsize=8)
    fig.suptitle("Val images beside the training image they resemble", fontsize=10)
    return _png(fig)
