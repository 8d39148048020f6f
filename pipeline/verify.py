"""`edgeship verify`: check a whole store, every stage and key, and every cache file in it.

An entry checks out when its manifest reads back whole and every output matches the manifest's
size and sha256; a cache file (teacher logits, calibration tensors, TensorRT engines and timing
caches) when it matches the hash recorded beside it. Every file is hashed: nothing is trusted
because of its size or mtime.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from calibration import hash_record
from pipeline.store import Damage, Store, StoreUnusable, shown
from runtimes import errors

CACHE = "cache"


class StoreVerifyFailed(RuntimeError, errors.StoreError):
    """`edgeship verify` found damaged entries or cache files; the message lists every one."""


@dataclass
class Verdict:
    root: Path
    entries: int = 0
    cache_files: int = 0
    damaged: list[Damage] = field(default_factory=list)
    unchecked: list[Path] = field(default_factory=list)   # cache files from before hash records

    def summary(self) -> str:
        head = (f"{shown(self.root)}: {self.entries} entries and {self.cache_files} cache files checked, "
                f"{len(self.damaged)} damaged"
                + (f", {len(self.unchecked)} without a hash record (rebuilt when next used)" if self.unchecked else ""))
        if not self.damaged:
            return head
        return head + ("; `edgeship run` rebuilds damaged entries and caches of the stages it runs, "
                       "or delete them")

    def raise_if_damaged(self) -> None:
        """Raise StoreVerifyFailed (exit 4) naming every damaged file, when there is any."""
        if self.damaged:
            listed = "; ".join(str(d) for d in self.damaged)
            raise StoreVerifyFailed(f"store '{shown(self.root)}' has {len(self.damaged)} damaged "
                                    f"file(s): {listed}; `edgeship run` rebuilds them")


def verify_store(root: str | Path) -> Verdict:
    """Check every entry and cache file under `root`; a missing store is an empty, good one."""
    store = Store(root)
    store.check_root()
    verdict = Verdict(store.root)
    for entry in store.entry_dirs():
        verdict.entries += 1
        _, damage = store.lookup(entry.parent.name, entry.name)
        if damage:
            verdict.damaged.append(damage)
    cache = store.root / CACHE
    files = sorted(p for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else []
    for f in files:
        if f.name.startswith("."):          # a temporary file of a write in progress or killed
            continue
        if hash_record.is_record(f):
            data = f.with_name(f.name[:-len(hash_record.SUFFIX)])
            if not data.exists():
                verdict.damaged.append(Damage(data, "missing (its hash record is there)"))
            continue
        verdict.cache_files += 1
        if not hash_record.record_path(f).exists():
            verdict.unchecked.append(f)
            continue
        why = hash_record.problem(f)
        if why:
            verdict.damaged.append(Damage(f, why))
    return verdict


def verify_locked(root: str | Path) -> Verdict:
    """`verify_store` holding the store's lock, so no run replaces an entry while it is read; a
    read-only store (which no run can write) is checked without it."""
    store = Store(root)
    store.check_root()
    if not store.root.is_dir():
        return Verdict(store.root)
    try:
        store.__enter__()
    except StoreUnusable:
        return verify_store(root)
    try:
        return verify_store(root)
    finally:
        store.__exit__(None, None, None)
