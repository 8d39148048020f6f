"""`edgeship audit`: the data audit alone, before (or instead of) a run, as text or JSON.

It scans the tree as a run would (same scan cache, so a tree a run has seen is not decoded
again), prints every finding, then refuses as a run would: exit 7 on leaks or conflicts the
config does not allow. The frozen-feature look-alikes need the backbone, so they come from the
finetune stage (its manifest's `data_audit`), not from here.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

from pipeline.config import DataKind, DataSpec
from pipeline.data.audit import DataAudit, audit_images, enforce
from pipeline.data.imageset import DataWarning


def audit_tree(spec: DataSpec, store_root: str | Path | None) -> tuple[DataAudit, Path]:
    """(the audit of the ImageFolder tree at spec.root, that root); refuses nothing itself."""
    from pipeline.data.imagefolder import scan_tree, without_excluded
    from pipeline.data.scan_cache import ScanCache
    root = Path(spec.root).expanduser()
    cache = ScanCache.in_store(store_root) if store_root else None
    _, entries, skipped = scan_tree(root, spec.skip_corrupt, cache)
    entries, _ = without_excluded(spec, root, entries, skipped)      # as a run leaves them out
    images = [s for split in ("train", "val") for _, s in entries[split]]
    return audit_images(images, spec.near_duplicate_bits), root


def describe(audit: DataAudit) -> list[str]:
    """Every finding, one line each, after the one-line summary."""
    lines = [f"audit: {audit.summary()}"]
    for kind, groups in (("leak", audit.leaks), ("conflict", audit.conflicts), ("repeat", audit.repeats)):
        for c in groups:
            if kind == "leak" and c.conflict:
                continue                              # listed once, as the conflict it also is
            same = "same bytes" if c.same_bytes else "same pixels, other bytes"
            named = " = ".join(f"{i.rel} ({i.label})" for i in c.images)
            lines.append(f"  {kind + (' + leak' if kind == 'conflict' and c.leak else ''):<16} {named} ({same})")
    for p in audit.near:
        labels = p.val.label if p.val.label == p.train.label else f"{p.val.label} vs {p.train.label}"
        lines.append(f"  {'near copy':<16} {p.val.rel} ~ {p.train.rel} ({p.bits} of 64 bits differ; {labels})")
    return lines


def run_audit(spec: DataSpec, store_root: str | Path | None, as_json: bool,
              show: Callable[[str], None] = print) -> None:
    """Print the audit (text or the manifest's JSON record), then refuse as a run would."""
    if spec.kind != DataKind.imagefolder:
        show(f"audit: data.kind '{spec.kind.value}' is a built-in dataset; the audit covers "
             f"ImageFolder trees (data.kind: imagefolder)")
        return
    audit, root = audit_tree(spec, store_root)
    if as_json:
        show(json.dumps(audit.to_dict(), indent=2))
    else:
        for line in describe(audit):
            show(line)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)         # printed above already
        enforce(audit, spec, root)
