"""The baseline a report is compared with, and whether the two can be compared at all.

Latency is comparable only between runs on the same machine and software: CPU model, flags and
cores, the thread count, the inference libraries' versions, GPUs, the CPU frequency governor and
a Jetson's power mode (runtimes.environment's record). Accuracy and latency are comparable only
on the same data: the same val split (its content fingerprint), the same number of scored
images and the same input size. Anything else is "not comparable", never a regression.
"""
from __future__ import annotations

from pathlib import Path

from runtimes import errors
from runtimes.environment import RUNTIME_PACKAGES, fingerprint

LAST = "last"
REPORT = "report.json"


class BaselineMissing(ValueError, errors.ConfigError):
    """check.baseline names no readable report."""


def environment_differences(base: dict, new: dict) -> list[str]:
    """'what: baseline -> new' for every part of the environment record that changes latency."""
    fa, fb = fingerprint(base or {}), fingerprint(new or {})
    diffs = []
    for key in ("model", "architecture", "flags", "logical_cores"):
        if fa["cpu"].get(key) != fb["cpu"].get(key):
            diffs.append(f"cpu {key}: {fa['cpu'].get(key)} -> {fb['cpu'].get(key)}")
    ga, gb = (base or {}).get("cpu") or {}, (new or {}).get("cpu") or {}
    if ga.get("scaling_governor") != gb.get("scaling_governor"):
        diffs.append(f"cpu governor: {ga.get('scaling_governor')} -> {gb.get('scaling_governor')}")
    if fa["threads"] != fb["threads"]:
        diffs.append(f"threads: {fa['threads']} -> {fb['threads']}")
    pa, pb = fa["packages"] or {}, fb["packages"] or {}
    for name in RUNTIME_PACKAGES:
        if pa.get(name) != pb.get(name):
            diffs.append(f"{name}: {pa.get(name)} -> {pb.get(name)}")
    for key in ("gpus", "cuda", "jetson"):
        if fa[key] != fb[key]:
            diffs.append(f"{key}: {fa[key]} -> {fb[key]}")
    return diffs


DATA_FIELDS = (("val_split", "val split"), ("accuracy_images", "scored images"),
               ("input_size", "input size"))


def data_differences(base: dict, new: dict) -> list[str]:
    """How two rows' data differ (val split fingerprint, images scored, input size); a field the
    baseline did not record counts as a difference, since sameness cannot be shown."""
    diffs = []
    for key, label in DATA_FIELDS:
        a, b = base.get(key), new.get(key)
        if a is None or b is None:
            diffs.append(f"{label} not recorded in {'the baseline' if a is None else 'this run'}")
        elif a != b:
            shown = (lambda v: str(v)[:12]) if key == "val_split" else str
            diffs.append(f"{label}: {shown(a)} -> {shown(b)}")
    return diffs


def resolve_report(path: str | Path) -> Path:
    """A report.json; a folder holding one (a report store entry); or an artifact store, whose
    newest report entry is taken."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / REPORT).is_file():
        return p / REPORT
    if (p / "report").is_dir():
        from pipeline.store import Store
        for entry in Store(p).entries("report"):
            if (entry.entry_dir / REPORT).is_file():
                return entry.entry_dir / REPORT
    raise FileNotFoundError(f"'{path}' is not a report.json, a folder holding one, or an artifact "
                            f"store with a report entry; run `edgeship run report` to make one")


def _report_entries(store_root: str | Path, run_name: str) -> list:
    from pipeline.store import Store
    return [m for m in Store(store_root).entries("report")
            if m.params.get("run") == run_name and (m.entry_dir / "report.json").is_file()]


def identity(setting: str | None, store_root: str | Path, run_name: str) -> object:
    """What the baseline setting points at now, for the check stage's cache key: a new report
    in the store (for 'last') or a changed baseline file re-runs the check."""
    if not setting:
        return None
    if setting == LAST:
        return [[m.key, m.timings.get("finished")] for m in _report_entries(store_root, run_name)]
    from calibration.hashing import sha256_file
    try:
        return {"path": setting, "sha256": sha256_file(resolve_report(setting))}
    except (FileNotFoundError, OSError):
        return {"path": setting, "missing": True}


def resolve(setting: str, store_root: str | Path, run_name: str, current_key: str | None) -> Path | None:
    """The baseline's report.json; None for 'last' when the store holds no other report of this
    run. Raises BaselineMissing for a path that holds no report."""
    if setting == LAST:
        others = [m for m in _report_entries(store_root, run_name) if m.key != current_key]
        return others[0].entry_dir / "report.json" if others else None
    try:
        return resolve_report(setting)
    except FileNotFoundError as exc:
        raise BaselineMissing(f"check.baseline '{setting}' holds no report: {exc}; give a "
                              f"report.json, a run folder or a store, or 'last'") from None
