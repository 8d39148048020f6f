"""What the scan learned about each image, kept between runs so an unchanged tree is not decoded again.

`<run.store>/cache/scan/<listing hash>.json`, where the listing is every image's (path under the
root, size, mtime_ns) and the file holds each image's sha256, decode error, pixel digest and
perceptual hash. The root's own location is not part of it: a moved tree with the same files
finds its entry. A tree with a few changed files takes what still matches from the newest entry
and checks only the rest.

Verified on use: each file records the sha256 of its body, and one that does not match (edited,
half-written by another tool) is ignored with a warning and rewritten.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

from pipeline.hashing import sha256_json

logger = logging.getLogger(__name__)

FORMAT = 2         # 2: each file also records its pixel digest and perceptual hash
KEEP = 8          # entries kept per store: enough for a few datasets and their recent edits
CACHE_DIR = ("cache", "scan")

Stat = tuple[str, int, int]            # (path under the root, size, mtime_ns)
Record = tuple[str, "str | None", str, str]   # decode.Check: (sha256, error, pixels, phash)


def listing_key(listing: Sequence[Stat]) -> str:
    """The name of the entry for this listing (order-independent)."""
    return sha256_json(sorted([list(s) for s in listing]))


class ScanCache:
    """The scan entries in `folder` (None: remember nothing between processes)."""

    def __init__(self, folder: Path | str | None):
        self.folder = Path(folder) if folder is not None else None

    @classmethod
    def in_store(cls, store_root: Path | str) -> "ScanCache":
        return cls(Path(store_root).joinpath(*CACHE_DIR))

    def _read(self, path: Path) -> dict[Stat, Record] | None:
        try:
            doc = json.loads(path.read_text())
            body = {k: v for k, v in doc.items() if k != "sha256"}
            if doc.get("format") != FORMAT:      # written by another edgeship: not damage
                logger.debug("scan cache %s has format %s, not %s; checking the images again",
                             path, doc.get("format"), FORMAT)
                return None
            ok = doc.get("sha256") == sha256_json(body)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            logger.warning("scan cache %s does not match its recorded hash; checking the images "
                           "again and rewriting it", path)
            return None
        return {(rel, size, mtime): (sha, error, pixels, phash)
                for rel, size, mtime, sha, error, pixels, phash in doc["files"]}

    def has(self, listing: Sequence[Stat]) -> bool:
        """Whether an entry for exactly this listing exists (not verified: for skipping a write)."""
        return self.folder is None or (self.folder / f"{listing_key(listing)}.json").is_file()

    def lookup(self, listing: Sequence[Stat]) -> tuple[dict[Stat, Record], bool]:
        """(records known for these files, whether the entry for exactly this listing was found)."""
        if self.folder is None or not self.folder.is_dir():
            return {}, False
        exact = self.folder / f"{listing_key(listing)}.json"
        if exact.is_file():
            records = self._read(exact)
            if records is not None and all(s in records for s in listing):
                return records, True
        others = sorted((p for p in self.folder.glob("*.json") if p != exact), key=_age)
        donor = self._read(others[0]) if others else None
        return donor or {}, False

    def save(self, listing: Sequence[Stat], records: dict[Stat, Record]) -> Path | None:
        """Write the entry for `listing` atomically; a store that cannot be written only warns."""
        if self.folder is None:
            return None
        files = sorted([*s, *records[s]] for s in listing)
        body = {"format": FORMAT, "listing": listing_key(listing), "files": files}
        doc = {**body, "sha256": sha256_json(body)}
        path = self.folder / f"{body['listing']}.json"
        tmp = self.folder / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A name of our own rather than mkstemp's: mkstemp creates 0600 files, and a shared
            # store's cache should be as readable as the rest of it.
            with open(tmp, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            logger.warning("cannot write the scan cache in %s (%s); the next run checks every "
                           "image again", self.folder, e)
            return None
        self._prune()
        return path

    def _prune(self) -> None:
        entries = sorted(self.folder.glob("*.json"), key=_age)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)


def _age(path: Path) -> int:
    """Sort key, newest first; an entry another process just removed sorts last."""
    try:
        return -path.stat().st_mtime_ns
    except OSError:
        return 0
