"""The data audit: what the scan's fingerprints say about the dataset before anything trains on it.

A copy of a training image in val inflates the val accuracy every budget and headline rests on
(leakage); one picture under two labels teaches both (a conflict). Both stop the run by default,
naming the pairs; `data.allow_leakage` / `data.allow_conflicting_labels` turn them into warnings.
Repeats (one picture twice in one split and class) and near copies across the splits are
warned about and recorded, never refused: a burst of shots is a judgement call, a byte copy is not.

Near copies are perceptual hashes within `data.near_duplicate_bits` of 64 (default 4). Measured on
flowers5 and trashnet5 (one JPEG of every 7 edited): re-encoding at quality 50 and resizing to
90% or 50% moved at most 4 bits, brightening by 15% at most 8; unrelated photos were never
closer than 6 bits (trashnet5: small objects centred on the same white board), and in flowers5
12 unrelated pairs only down to 14. The one pair at 4 bits in flowers5 is a real near copy: the
same rose photo under two colour filters, in train and in val. Crops move 10 to 30 bits: the hash
does not find them (the frozen-feature similarity of the probe is the tool for those).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DataSpec
from pipeline.data.duplicates import Copies, NearPair, Scanned, exact_copies, near_copies
from pipeline.data.imageset import DataError, DataWarning

NAMED = 5            # pairs named in one message; the audit record lists them all


@dataclass
class DataAudit:
    """Exact copies (leaks, conflicts, repeats) and near copies across the splits."""

    images: int
    copies: list[Copies] = field(default_factory=list)
    near: list[NearPair] = field(default_factory=list)
    near_bits: int = 4

    @property
    def leaks(self) -> list[Copies]:
        return [c for c in self.copies if c.leak]

    @property
    def conflicts(self) -> list[Copies]:
        return [c for c in self.copies if c.conflict]

    @property
    def repeats(self) -> list[Copies]:
        return [c for c in self.copies if c.repeat]

    def leaked_val(self) -> list[str]:
        """Val images with an exact or near copy in train, each once, sorted."""
        exact = {i.rel for c in self.leaks for i in c.images if i.split == "val"}
        return sorted(exact | {p.val.rel for p in self.near})

    def to_dict(self) -> dict:
        """The record the finetune manifest, the report and `check` read."""
        return {"images": self.images, "leaked_val_images": len(self.leaked_val()),
                "exact": {"leaks": [c.to_dict() for c in self.leaks],
                          "conflicts": [c.to_dict() for c in self.conflicts],
                          "repeats": [c.to_dict() for c in self.repeats]},
                "near": {"max_bits": self.near_bits, "pairs": [p.to_dict() for p in self.near]}}

    def summary(self) -> str:
        """One line: what was found."""
        return (f"{self.images} images: {len(self.leaks)} exact copies across train/val, "
                f"{len(self.conflicts)} images under two labels, {len(self.repeats)} repeated "
                f"within a split, {len(self.near)} near copies across train/val (perceptual hash "
                f"within {self.near_bits} bits); {len(self.leaked_val())} val image(s) have a copy in train")


def audit_images(images: list[Scanned], near_bits: int) -> DataAudit:
    """The audit of every readable image the scan found."""
    return DataAudit(len(images), exact_copies(images), near_copies(images, near_bits), near_bits)


def _named(groups: list[Copies], with_labels: bool) -> str:
    def one(c: Copies) -> str:
        text = " = ".join(f"{i.rel} ({i.label})" if with_labels else i.rel for i in c.images)
        return text + ("" if c.same_bytes else " (same pixels, other bytes)")
    more = f" and {len(groups) - NAMED} more" if len(groups) > NAMED else ""
    return "; ".join(one(c) for c in groups[:NAMED]) + more


def _sort(text: str, allowed: bool, switch: str, fix: str, warned: list, refused: list) -> None:
    """A finding is a warning when its switch allows it, else a refusal with its fix."""
    if allowed:
        warned.append(f"{text} ({switch}: true)")
    else:
        refused.append((text, f"{fix}, or set {switch}: true to train anyway"))


def enforce(audit: DataAudit, spec: DataSpec, root: Path) -> None:
    """Stop on leaks and conflicts unless allowed; warn about the rest (one line each)."""
    refused, warned = [], []
    if audit.conflicts:
        text = (f"{len(audit.conflicts)} image(s) under two labels, so one label is wrong for "
                f"them: {_named(audit.conflicts, True)}")
        _sort(text, spec.allow_conflicting_labels, "data.allow_conflicting_labels",
              "keep each under its right class only", warned, refused)
    leaks = [c for c in audit.leaks if not c.conflict or spec.allow_conflicting_labels]
    if leaks:
        text = (f"{len(leaks)} val image(s) are copies of training images (train/val leakage: the "
                f"val accuracy would count images the model learnt): {_named(leaks, False)}")
        _sort(text, spec.allow_leakage, "data.allow_leakage", "delete the val copy of each", warned, refused)
    if refused:
        what = "; and ".join(t for t, _ in refused)
        fixes = "; ".join(f for _, f in refused)
        raise DataError(f"data.root '{root}': {what}; {fixes}")
    if audit.repeats:
        n = sum(len(c.images) - 1 for c in audit.repeats)
        warned.append(f"{n} extra cop(ies) of {len(audit.repeats)} image(s) within one split and "
                      f"class, which weigh them double: {_named(audit.repeats, False)}")
    if audit.near:
        pairs = ", ".join(f"{p.val.rel} ~ {p.train.rel} ({p.bits} bits)" for p in audit.near[:NAMED])
        more = f" and {len(audit.near) - NAMED} more" if len(audit.near) > NAMED else ""
        warned.append(f"{len(audit.near)} val image(s) look like training images (perceptual hash "
                      f"within {audit.near_bits} of 64 bits: recompressed, resized or recoloured "
                      f"copies): {pairs}{more}; check them, and delete the val copy of real ones")
    for text in warned:
        warnings.warn(f"data.root '{root}': {text}", DataWarning, stacklevel=3)
