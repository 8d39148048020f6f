"""`edgeship compare RUN_A RUN_B`: what changed between two runs' reports, for code review.

Rows are matched by id (artifact@runtime/device/batch). For rows measured in both: accuracy
change in points, p50/p90/p99 change in percent, the p90 ratio B/A with its interval and the
verdict (slower / faster / within noise, the words of pipeline.gate.intervals), size change;
then status changes, rows only in one report, and differences in the environment. Rows scored
on other data (val split, images scored, input size) say "not comparable" instead of an accuracy
change, and latency on another machine or library version says "not comparable" too: neither
is a code change.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.gate import intervals
from pipeline.gate.baseline import REPORT, data_differences, environment_differences, resolve_report
from pipeline.render.markdown import md_table

__all__ = ["REPORT", "compare_reports", "load_report", "resolve_report"]


def load_report(path: str | Path) -> tuple[Path, dict]:
    p = resolve_report(path)
    try:
        return p, json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); regenerate it with `edgeship run report --force report`")


def _pct(a, b) -> str:
    if a is None or b is None:
        return "-"
    if a == 0:
        return "+0.0%" if b == 0 else "new"
    return f"{(b - a) / a * 100:+.1f}%"


def _pts(a, b) -> str:
    return "-" if a is None or b is None else f"{b - a:+.2f}"


def _mb(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _size_delta(a, b) -> str:
    if a is None or b is None:
        return "-"
    return "=" if a == b else f"{(b - a) / 1e6:+.3f} MB ({_pct(a, b)})"


def _headline(ha: dict | None, hb: dict | None) -> list[str]:
    if not ha or not hb:
        return [f"Headline: {'present' if ha else 'none'} in A, {'present' if hb else 'none'} in B.", ""]
    def fmt(h, k, f):
        return f.format(h[k]) if h.get(k) is not None else "-"
    lines = [f"Headline ({hb['target']}, batch {hb['batch']}):",
             f"- deployed: {ha['deployed']} -> {hb['deployed']}",
             f"- speed-up over the teacher at p90: {fmt(ha, 'speedup_p90', '{:.1f}x')} -> {fmt(hb, 'speedup_p90', '{:.1f}x')}",
             f"- deployed p90: {fmt(ha, 'deployed_p90_ms', '{:.3f}')} -> {fmt(hb, 'deployed_p90_ms', '{:.3f}')} ms "
             f"({_pct(ha.get('deployed_p90_ms'), hb.get('deployed_p90_ms'))})",
             f"- deployed top-1: {fmt(ha, 'deployed_accuracy', '{:.2f}')}% -> {fmt(hb, 'deployed_accuracy', '{:.2f}')}% "
             f"({_pts(ha.get('deployed_accuracy'), hb.get('deployed_accuracy'))} points)",
             f"- deployed size: {_mb(ha.get('deployed_size_bytes'))} -> {_mb(hb.get('deployed_size_bytes'))} MB", ""]
    return lines


def _environment(ea: dict, eb: dict) -> list[str]:
    diffs = []
    ca, cb = ea.get("cpu") or {}, eb.get("cpu") or {}
    for key in ("model", "logical_cores", "flags", "scaling_governor"):
        if ca.get(key) != cb.get(key):
            diffs.append(f"- cpu {key}: {ca.get(key)} -> {cb.get(key)}")
    if ea.get("threads") != eb.get("threads"):
        diffs.append(f"- threads: {ea.get('threads')} -> {eb.get('threads')}")
    pa, pb = ea.get("packages") or {}, eb.get("packages") or {}
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name) != pb.get(name):
            diffs.append(f"- {name}: {pa.get(name)} -> {pb.get(name)}")
    ga = [g.get("name") for g in ea.get("gpus") or []]
    gb = [g.get("name") for g in eb.get("gpus") or []]
    if ga != gb:
        diffs.append(f"- GPUs: {ga or 'none'} -> {gb or 'none'}")
    if not diffs:
        return ["Environment: same machine description and library versions.", ""]
    return ["Environment differs (latency verdicts say not comparable; changes may come from "
            "this, not from the code):", *diffs, ""]


def _verdict(x: dict, y: dict, data: list[str], env: list[str], widen: float) -> tuple[str, str]:
    """(p90 ratio B/A with its interval, verdict) of one row."""
    if data:
        return "-", "not comparable (data)"
    ratio = intervals.ratio(y, x, "p90", widen)
    shown = "-" if ratio is None else f"{ratio.estimate:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]"
    if env:
        return shown, "not comparable (environment)"
    return shown, intervals.claim(ratio)


def _data_note(pairs: list[tuple[dict, dict]]) -> list[str]:
    diffs = sorted({d for x, y in pairs for d in data_differences(x, y)})
    if not diffs:
        return []
    return ["Data differs (accuracy and latency below are not comparable):",
            *[f"- {d}" for d in diffs], ""]


def compare_reports(a: str | Path, b: str | Path) -> str:
    """A text report of what changed from run A to run B (markdown, for a PR comment)."""
    path_a, ra = load_report(a)
    path_b, rb = load_report(b)
    rows_a = {r["id"]: r for r in ra["rows"]}
    rows_b = {r["id"]: r for r in rb["rows"]}
    out = [f"A: {path_a} (generated {ra.get('generated')})",
           f"B: {path_b} (generated {rb.get('generated')})", ""]
    out += _headline(ra.get("headline"), rb.get("headline"))
    changed, status = [], []
    env = environment_differences(ra.get("environment") or {}, rb.get("environment") or {})
    widen = intervals.combined_margin(ra.get("noise_floor"), rb.get("noise_floor"), stat="p90")
    both = [(x, rows_b[rid]) for rid, x in rows_a.items() if rid in rows_b
            and x["status"] == rows_b[rid]["status"] == "ok"]
    out += _data_note(both)
    for rid, x in rows_a.items():
        y = rows_b.get(rid)
        if y is None:
            continue
        if x["status"] != y["status"]:
            status.append(f"- {rid}: {x['status']} -> {y['status']}"
                          + (f" ({y.get('reason')})" if y.get("reason") else ""))
        elif x["status"] == "ok":
            fields = ("accuracy", "p50_ms", "p90_ms", "p99_ms", "size_bytes")
            if any(x.get(f) != y.get(f) for f in fields):
                data = data_differences(x, y)
                ratio, verdict = _verdict(x, y, data, env, widen)
                changed.append([rid, f"{x['accuracy']:.2f}", f"{y['accuracy']:.2f}",
                                "not comparable" if data else _pts(x["accuracy"], y["accuracy"]),
                                f"{x['p90_ms']:.3f}", f"{y['p90_ms']:.3f}",
                                _pct(x["p50_ms"], y["p50_ms"]), _pct(x["p90_ms"], y["p90_ms"]),
                                ratio, verdict, _pct(x["p99_ms"], y["p99_ms"]),
                                _size_delta(x.get("size_bytes"), y.get("size_bytes"))])
    if changed:
        out += ["Rows measured in both (B relative to A; p90 B/A with its 95% interval, widened "
                "by both runs' noise floors):", "",
                md_table(("Row", "Top-1 A %", "Top-1 B %", "Δ top-1 points", "p90 A ms", "p90 B ms",
                          "Δ p50", "Δ p90", "p90 B/A [CI]", "Latency verdict", "Δ p99", "Δ size"),
                         changed), ""]
    else:
        out += ["Rows measured in both: no change.", ""]
    if status:
        out += ["Status changes:", *status, ""]
    only_a = [rid for rid in rows_a if rid not in rows_b]
    only_b = [rid for rid in rows_b if rid not in rows_a]
    for label, ids, rows in (("Only in A", only_a, rows_a), ("Only in B", only_b, rows_b)):
        if ids:
            out += [f"{label}:", *[f"- {rid} ({rows[rid]['status']})" for rid in ids], ""]
    out += _environment(ra.get("environment") or {}, rb.get("environment") or {})
    return "\n".join(out).rstrip() + "\n"
