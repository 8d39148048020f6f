"""The data audit as the report shows it: the finetune manifest's `data_audit`, and a warning
when val holds copies of training images (the val accuracy every number rests on counts them)."""
from __future__ import annotations

SUSPECTS_LISTED = 10


def audit_notes(metrics: dict) -> tuple[dict | None, list[str]]:
    """(the audit record for the report, warnings); (None, []) when the finetune stage recorded
    none (a built-in dataset, or a manifest from before the audit)."""
    audit = metrics.get("data_audit")
    if not isinstance(audit, dict):
        return None, []
    warnings = []
    leaked = audit.get("leaked_val_images") or 0
    if leaked:
        warnings.append(f"{leaked} val image(s) have an exact or near copy in train (data audit): "
                        f"every val accuracy here counts them; delete the val copies, or gate with "
                        f"check.max_leaked_images")
    conflicts = (audit.get("exact") or {}).get("conflicts") or []
    if conflicts:
        warnings.append(f"{len(conflicts)} picture(s) are under two labels (data.allow_conflicting_labels)")
    return audit, warnings


def audit_lines(audit: dict | None) -> list[str]:
    """Markdown lines: what the audit found, pair by pair."""
    if not audit:
        return []
    exact = audit.get("exact") or {}
    near = (audit.get("near") or {}).get("pairs") or []
    alike = audit.get("lookalikes") or []
    out = ["## Data audit", "",
           f"{audit.get('images')} images; {len(exact.get('leaks') or [])} exact copies across train/val, "
           f"{len(exact.get('conflicts') or [])} under two labels, {len(exact.get('repeats') or [])} "
           f"repeated within a split, {len(near)} near copies (perceptual hash within "
           f"{(audit.get('near') or {}).get('max_bits')} of 64 bits), {len(alike)} look-alikes in the "
           f"teacher's frozen features.", ""]
    for kind in ("leaks", "conflicts", "repeats"):
        for g in exact.get(kind) or []:
            out.append(f"- {kind[:-1]}: " + " = ".join(f"`{i}`" for i in g["images"])
                       + ("" if g.get("same_bytes") else " (same pixels, other bytes)"))
    out += [f"- near copy: `{p['val']}` ~ `{p['train']}` ({p['bits']} bits)" for p in near]
    out += [f"- look-alike: `{p['val']}` ~ `{p['train']}` (cosine {p['similarity']:.2f}, margin "
            f"{p['margin']:.2f})" for p in alike]
    out += _mislabel_lines(audit.get("mislabels"))
    out += [f"- excluded (data.exclude): `{rel}`" for rel in audit.get("excluded") or []]
    return out + [""]


def _mislabel_lines(found: dict | None) -> list[str]:
    """The likely mislabels, first `SUSPECTS_LISTED`, after a sentence saying how they were found."""
    if not found:
        return []
    suspects = found.get("suspects") or []
    out = ["", f"{found.get('count', len(suspects))} likely mislabels ({found.get('method')}); "
               f"the first {min(len(suspects), SUSPECTS_LISTED)} by margin, for a person to look at "
               f"(`data.exclude` leaves out the wrong ones):", ""]
    out += [f"- likely mislabel: `{s['path']}` labelled {s['label']}, looks {s['predicted']} "
            f"(probability {s['confidence']:.2f}, margin {s['margin']:.2f})"
            for s in suspects[:SUSPECTS_LISTED]]
    return out
