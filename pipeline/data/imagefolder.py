"""A user's ImageFolder tree: root/train/<class>/<image> and root/val/<class>/<image>.

Every image is opened and verified when the tree is scanned, so a bad dataset fails before
training starts, with the path and the fix in the message. The same pass hashes each file's
bytes for the fingerprint.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataSpec
from pipeline.data.imageset import DataError, DataWarning, ImageSet, Splits, split_fingerprint
from pipeline.hashing import sha256_json

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXT_TEXT = "jpg, jpeg, png, webp"
_SPLITS = ("train", "val")
# (path, size, mtime_ns, inode) -> (sha256, error or None): a second scan in the same process
# re-reads only files that changed. The fingerprint itself is always the content hash.
_checked: dict[tuple, tuple[str, str | None]] = {}


def check_image(data: bytes) -> str | None:
    """Why these bytes are not a readable image, or None when they are.

    `verify()` checks structure (PNG chunk CRCs, headers); JPEG and WebP are also decoded, JPEG
    in draft mode at 1/8 scale, because a truncated JPEG passes `verify()`.
    """
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            if im.format in ("JPEG", "WEBP"):
                im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(e).__name__}: {e}"
    return None


def _check_file(path: Path) -> tuple[str, str | None]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _checked:
        data = path.read_bytes()
        _checked[key] = (hashlib.sha256(data).hexdigest(), check_image(data))
    return _checked[key]


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")   # .DS_Store, macOS '._x.jpg' resource forks, .git


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _images_in(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def to_rgb(im):
    """Any PIL mode as RGB: transparency flattened onto black, 16-bit gray scaled, not clipped."""
    from PIL import Image
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.max() > 255:
            arr = arr / 257.0
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class FolderImages:
    """Opens the i-th file of a split (EXIF orientation applied, so phone photos stand upright)."""

    root: str
    relpaths: list[str]

    def __call__(self, i: int):
        from PIL import Image, ImageOps
        with Image.open(os.path.join(self.root, self.relpaths[i])) as im:
            return to_rgb(ImageOps.exif_transpose(im))


def _require_tree(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data.root '{root}' does not exist (set data.root to a folder holding "
                        f"train/<class>/<image> and val/<class>/<image>)")
    if not root.is_dir():
        raise DataError(f"data.root '{root}' is a file, not a folder (expected {root}/train/<class>/<image> "
                        f"and {root}/val/<class>/<image>)")
    for split in _SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"data.root '{root}' has no '{split}' folder "
                            f"(expected {root / split}/<class>/<image>)")


def scan_tree(root: Path, skip_corrupt: bool) -> tuple[list[str], dict[str, list[tuple[str, int, str]]], list[str]]:
    """(classes, {split: [(relpath, target, sha256)]}, skipped relpaths), or a DataError."""
    _require_tree(root)
    folders = {split: _class_folders(root / split) for split in _SPLITS}
    for split in _SPLITS:
        if not folders[split]:
            raise DataError(f"data.root '{root}' has no class folders in {root / split} "
                            f"(expected {root / split}/<class>/<image>)")
    classes = [p.name for p in folders["train"]]
    for p in folders["val"]:
        if p.name not in classes:
            raise DataError(f"class '{p.name}' is in {root / 'val'} but not in {root / 'train'} "
                            f"(add {root / 'train' / p.name}/ with images, or remove {p})")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} holds one class folder ('{classes[0]}'); a classifier "
                        f"needs at least two (add {root / 'train'}/<other class>/<image>)")
    entries: dict[str, list[tuple[str, int, str]]] = {s: [] for s in _SPLITS}
    bad: list[tuple[str, str]] = []
    for split in _SPLITS:
        for folder in folders[split]:
            files = _images_in(folder)
            if not files:
                raise DataError(f"class folder '{folder}' holds no images ({_EXT_TEXT})")
            kept = 0
            for f in files:
                rel = f.relative_to(root).as_posix()
                sha, error = _check_file(f)
                if error:
                    bad.append((rel, error))
                    continue
                entries[split].append((rel, classes.index(folder.name), sha))
                kept += 1
            if not kept and skip_corrupt:
                raise DataError(f"class folder '{folder}' holds no readable images: all {len(files)} "
                                f"are corrupt (replace them, or remove the folder)")
    if bad and not skip_corrupt:
        rel, error = bad[0]
        more = f" and {len(bad) - 1} more: {', '.join(r for r, _ in bad[1:6])}" if len(bad) > 1 else ""
        raise DataError(f"image '{root / rel}' cannot be read ({error}){more}; replace or delete it, "
                        f"or set data.skip_corrupt: true to leave unreadable images out")
    if bad:
        listed = ", ".join(r for r, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {root} (data.skip_corrupt: true): "
                      f"{listed}", DataWarning, stacklevel=3)
    return classes, entries, [r for r, _ in bad]


def load_unlabelled_folder(root: str, skip_corrupt: bool = False) -> ImageSet:
    """Every image under `root` (any depth), checked like a training tree, as an ImageSet with no
    classes and target -1: extra images a student learns from the teacher's soft targets only."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"distill.unlabelled_root '{folder}' is not a folder (set it to a folder of "
                        f"images at any depth, or to null)")
    rels, shas, bad = [], [], []
    for f in _images_in(folder):
        sha, error = _check_file(f)
        rel = f.relative_to(folder).as_posix()
        if error:
            bad.append((rel, error))
        else:
            rels.append(rel)
            shas.append(sha)
    if bad and not skip_corrupt:
        rel, error = bad[0]
        raise DataError(f"image '{folder / rel}' cannot be read ({error}); replace or delete it, or set "
                        f"data.skip_corrupt: true to leave unreadable images out")
    if not rels:
        raise DataError(f"distill.unlabelled_root '{folder}' holds no readable images ({_EXT_TEXT})")
    targets = [-1] * len(rels)
    return ImageSet(ids=rels, targets=targets, classes=[], load=FolderImages(str(folder), rels),
                    fingerprint=split_fingerprint(rels, targets, shas))


def load_imagefolder_splits(spec: DataSpec) -> Splits:
    """The tree at `spec.root` as train/val image sets; classes are the sorted train folders."""
    root = Path(spec.root).expanduser()
    classes, entries, skipped = scan_tree(root, spec.skip_corrupt)
    sets = {}
    for split in _SPLITS:
        rels = [rel for rel, _, _ in entries[split]]
        targets = [t for _, t, _ in entries[split]]
        shas = [sha for _, _, sha in entries[split]]
        sets[split] = ImageSet(ids=rels, targets=targets, classes=list(classes),
                               load=FolderImages(str(root), rels),
                               fingerprint=split_fingerprint(rels, targets, shas))
    # The root's own name is left out: moving the tree must not invalidate caches.
    fingerprint = sha256_json({"kind": spec.kind.value, "classes": classes,
                               "train": sets["train"].fingerprint, "val": sets["val"].fingerprint})
    return Splits(train=sets["train"], val=sets["val"], classes=list(classes),
                  fingerprint=fingerprint, skipped=skipped)
