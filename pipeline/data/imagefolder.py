"""A user's ImageFolder tree: root/train/<class>/<image> and root/val/<class>/<image>.

The scan walks the tree without following a link out of the root or reaching anything twice
(`walk`), decodes every image to the last pixel in parallel (`decode`) and hashes its bytes for
the fingerprint, so a bad dataset fails before training starts, with the path and the fix in
the message; the audit (`audit`) then looks for copies of one picture across the splits and
labels. What the scan learns is remembered per process and, given a cache, between runs.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DataSpec
from pipeline.data.audit import audit_images, enforce
from pipeline.data.decode import ImageReadError, decode_rgb, iter_checks, to_rgb, workers
from pipeline.data.duplicates import Scanned
from pipeline.data.imageset import DataError, DataWarning, ImageSet, Splits, split_fingerprint
from pipeline.data.scan_cache import Record, ScanCache
from pipeline.data.walk import EXTENSIONS, Node, TreeWalk
from pipeline.hashing import sha256_json

__all__ = ["EXTENSIONS", "FolderImages", "load_imagefolder_splits", "load_unlabelled_folder",
           "scan_tree", "to_rgb"]

logger = logging.getLogger(__name__)

_EXT_TEXT = "jpg, jpeg, png, webp"
_SPLITS = ("train", "val")
_LISTED = 20          # skipped images named in the warning line
# (real path, size, mtime_ns, inode) -> (sha256, error or None): a second scan in the same process
# re-reads only files that changed. The fingerprint itself is always the content hash.
_checked: dict[tuple, Record] = {}


def _check(root: Path, nodes: list[Node], cache: ScanCache) -> list[Record]:
    """(sha256, error) of every image node: from this process, the scan cache, or decoded now."""
    stats = [os.stat(n.real) for n in nodes]
    listing = [(Path(n.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)
               for n, st in zip(nodes, stats)]
    memo = [(n.real, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in zip(nodes, stats)]
    records: list[Record | None] = [_checked.get(m) for m in memo]
    exact = all(records) and cache.has(listing)      # every stage key rescans: keep that cheap
    if not exact:
        known, exact = cache.lookup(listing)
        records = [r or known.get(s) for r, s in zip(records, listing)]
    todo = [i for i, r in enumerate(records) if r is None]
    if todo:
        t0 = time.perf_counter()
        from runtimes.progress import progress
        checks = iter_checks([nodes[i].real for i in todo])
        for i, record in zip(todo, progress(checks, total=len(todo), desc="data: checking images",
                                            unit="images", log=logger)):
            records[i] = record
        logger.info("data: decoded %d of %d images under %s in %.1f s (%d threads)", len(todo),
                    len(nodes), root, time.perf_counter() - t0, workers())
    for m, r in zip(memo, records):
        _checked[m] = r
    if not exact:
        cache.save(listing, dict(zip(listing, records)))
    return records


@dataclass(frozen=True)
class FolderImages:
    """Opens the i-th file of a split (EXIF orientation applied, so phone photos stand upright)."""

    root: str
    relpaths: list[str]

    def __call__(self, i: int):
        path = os.path.join(self.root, self.relpaths[i])
        try:
            return decode_rgb(path)
        except Exception as e:  # whatever PIL raises: the user needs the path, not PIL's internals
            raise ImageReadError(
                f"image '{path}' cannot be read ({type(e).__name__}: {e}) although the data scan "
                f"decoded it, so it changed since; run again (the scan checks changed images, and "
                f"data.skip_corrupt: true leaves unreadable ones out) or restore the file") from e


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


def _report_bad(root: Path, bad: list[tuple[str, str]], skip_corrupt: bool) -> None:
    """Refuse unreadable images, or (data.skip_corrupt) warn once, naming them."""
    if bad and not skip_corrupt:
        rel, error = bad[0]
        more = f" and {len(bad) - 1} more: {', '.join(r for r, _ in bad[1:6])}" if len(bad) > 1 else ""
        raise DataError(f"image '{root / rel}' cannot be read ({error}){more}; replace or delete it, "
                        f"or set data.skip_corrupt: true to leave unreadable images out")
    if bad:
        listed = ", ".join(r for r, _ in bad[:_LISTED])
        if len(bad) > _LISTED:
            listed += f" and {len(bad) - _LISTED} more"
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {root} (data.skip_corrupt: true): "
                      f"{listed}", DataWarning, stacklevel=4)


def scan_tree(root: Path, skip_corrupt: bool, cache: ScanCache | None = None
              ) -> tuple[list[str], dict[str, list[tuple[int, Scanned]]], list[str]]:
    """(classes, {split: [(target, what the scan saw)]}, skipped relpaths), or a DataError."""
    _require_tree(root)
    walk = TreeWalk(root)
    folders = {split: walk.children(walk.enter(root / split))[0] for split in _SPLITS}
    for split in _SPLITS:
        if not folders[split]:
            raise DataError(f"data.root '{root}' has no class folders in {root / split} "
                            f"(expected {root / split}/<class>/<image>)")
    classes = [Path(f.path).name for f in folders["train"]]
    for f in folders["val"]:
        name = Path(f.path).name
        if name not in classes:
            raise DataError(f"class '{name}' is in {root / 'val'} but not in {root / 'train'} "
                            f"(add {root / 'train' / name}/ with images, or remove {f.path})")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} holds one class folder ('{classes[0]}'); a classifier "
                        f"needs at least two (add {root / 'train'}/<other class>/<image>)")
    found: list[tuple[str, Node, list[Node]]] = []
    for split in _SPLITS:
        for folder in folders[split]:
            files = walk.images(folder)
            if not files:
                raise DataError(f"class folder '{folder.path}' holds no images ({_EXT_TEXT})")
            found.append((split, folder, files))
    records = iter(_check(root, [n for _, _, files in found for n in files], cache or ScanCache(None)))
    entries: dict[str, list[tuple[int, Scanned]]] = {s: [] for s in _SPLITS}
    bad: list[tuple[str, str]] = []
    for split, folder, files in found:
        kept = 0
        label = Path(folder.path).name
        for node, (sha, error, pixels, phash) in zip(files, records):
            rel = Path(node.path).relative_to(root).as_posix()
            if error:
                bad.append((rel, error))
                continue
            entries[split].append((classes.index(label), Scanned(split, rel, label, sha, pixels, phash)))
            kept += 1
        if not kept and skip_corrupt:
            raise DataError(f"class folder '{folder.path}' holds no readable images: all {len(files)} "
                            f"are corrupt (replace them, or remove the folder)")
    _report_bad(root, bad, skip_corrupt)
    return classes, entries, [r for r, _ in bad]


def without_excluded(spec: DataSpec, root: Path, entries: dict[str, list[tuple[int, Scanned]]],
                     skipped: list[str]) -> tuple[dict[str, list[tuple[int, Scanned]]], list[str]]:
    """(the scan's entries less the images `data.exclude` names, those names); an entry naming
    no image of the tree (nor an unreadable one skipped) is a config error."""
    from pipeline.data.exclude import split_off
    present = {s.rel for split in _SPLITS for _, s in entries[split]} | set(skipped)
    excluded = split_off(spec.exclude, root, present)
    if not excluded:
        return entries, []
    gone = set(excluded)
    kept = {split: [(t, s) for t, s in entries[split] if s.rel not in gone] for split in _SPLITS}
    for split in _SPLITS:
        if not kept[split]:
            raise DataError(f"data.exclude leaves no image in {root / split}; exclude fewer images")
    logger.info("data: %d image(s) left out (data.exclude): %s", len(excluded),
                ", ".join(excluded[:_LISTED]) + (" ..." if len(excluded) > _LISTED else ""))
    return kept, excluded


def load_unlabelled_folder(root: str, skip_corrupt: bool = False,
                           setting: str = "distill.unlabelled_root") -> ImageSet:
    """Every image under `root` (any depth), checked like a training tree, as an ImageSet with no
    classes and target -1 (extra images for distillation, or a target domain without labels);
    `setting` is the config key messages name."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"{setting} '{folder}' is not a folder (set it to a folder of "
                        f"images at any depth, or to null)")
    walk = TreeWalk(folder, setting)
    nodes = walk.images(walk.top())
    rels, shas, bad = [], [], []
    for node, (sha, error, _, _) in zip(nodes, _check(folder, nodes, ScanCache(None))):
        rel = Path(node.path).relative_to(folder).as_posix()
        if error:
            bad.append((rel, error))
        else:
            rels.append(rel)
            shas.append(sha)
    if not rels and not bad:
        raise DataError(f"{setting} '{folder}' holds no images ({_EXT_TEXT})")
    _report_bad(folder, bad, skip_corrupt)
    if not rels:
        raise DataError(f"{setting} '{folder}' holds no readable images ({_EXT_TEXT})")
    targets = [-1] * len(rels)
    return ImageSet(ids=rels, targets=targets, classes=[], load=FolderImages(str(folder), rels),
                    fingerprint=split_fingerprint(rels, targets, shas))


def load_imagefolder_splits(spec: DataSpec, cache: ScanCache | None = None) -> Splits:
    """The tree at `spec.root` as train/val image sets; classes are the sorted train folders.
    `cache` keeps what the scan learned between runs (see `scan_cache`)."""
    root = Path(spec.root).expanduser()
    classes, entries, skipped = scan_tree(root, spec.skip_corrupt, cache)
    entries, excluded = without_excluded(spec, root, entries, skipped)
    audit = audit_images([s for split in _SPLITS for _, s in entries[split]], spec.near_duplicate_bits)
    enforce(audit, spec, root)
    sets = {}
    for split in _SPLITS:
        rels = [s.rel for _, s in entries[split]]
        targets = [t for t, _ in entries[split]]
        shas = [s.sha256 for _, s in entries[split]]
        sets[split] = ImageSet(ids=rels, targets=targets, classes=list(classes),
                               load=FolderImages(str(root), rels),
                               fingerprint=split_fingerprint(rels, targets, shas))
    # The root's own name is left out: moving the tree must not invalidate caches.
    fingerprint = sha256_json({"kind": spec.kind.value, "classes": classes,
                               "train": sets["train"].fingerprint, "val": sets["val"].fingerprint})
    return Splits(train=sets["train"], val=sets["val"], classes=list(classes),
                  fingerprint=fingerprint, skipped=skipped, audit=audit.to_dict(), excluded=excluded)
