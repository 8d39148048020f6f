"""The CI gate's budgets, evaluated against report.json.

    min_accuracy        val top-1 (%) of the deployed model           >= limit
    max_accuracy_drop   teacher top-1 minus deployed top-1 (points)   <= limit
    max_p90_ms          {"runtime/device": ms}: p90 at the headline batch of the fastest artifact
                        on that runtime and device whose accuracy is within the deploy tolerance
                        of the teacher (the model one would ship there)  <= limit
    max_p90_vs_teacher  {"runtime/device": ratio}: that same row's p90 over the teacher's p90 (the
                        headline's PyTorch eager FP32 row)  <= limit; 0.5 = at least 2x faster
    max_size_mb         size on disk of the deployed model (MB = 10^6 bytes)  <= limit
    required targets    every target with `required: true` has at least one measured row

A 'runtime/device' key may name a configured target as its device ('onnxruntime/jetson': the
fastest shippable row on any of its devices) or one of its devices ('onnxruntime/jetson/cuda').

A p90 budget for a runtime/device that cannot run here (TensorRT on a CPU machine) is skipped
with the reason, so one budget file serves every CI machine; a key that matches no row at all
fails, since it is most likely a typo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.config import Check
from pipeline.measure.artifacts import held_back, shippable as deployable

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Verdict:
    name: str
    status: str                 # pass | fail | skip
    limit: float
    unit: str
    kind: str                   # "min" or "max"
    measured: float | None = None
    subject: str = ""           # the row that was measured
    note: str = ""              # why it was skipped, or what could not be measured

    @property
    def message(self) -> str:
        """One line: the budget, the measured value and the limit, and what was measured."""
        op = ">=" if self.kind == "min" else "<="
        digits = 2 if self.unit in ("%", "points", "x") else 3
        if not self.unit:  # a finding, not a budget: nothing to compare with a limit
            return f"{self.status.upper():<4} {self.name}: {self.note}"
        if self.measured is None:
            return f"{self.status.upper():<4} {self.name}: {self.note} (limit {op} {self.limit:.{digits}f} {self.unit})"
        line = (f"{self.status.upper():<4} {self.name}: measured {self.measured:.{digits}f} {self.unit}, "
                f"limit {op} {self.limit:.{digits}f} {self.unit}")
        return line + (f" ({self.subject})" if self.subject else "") + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


def _judge(name, value, limit, unit, kind, subject="", note="") -> Verdict:
    ok = value >= limit if kind == "min" else value <= limit
    return Verdict(name, PASS if ok else FAIL, limit, unit, kind, value, subject, note)


def _row(report: dict, row_id: str | None) -> dict | None:
    return next((r for r in report["rows"] if r["id"] == row_id), None)


def _fastest_shippable(report: dict, runtime: str, device: str) -> tuple[dict | None, list[dict], str]:
    """(row, the rows of that runtime/device, note) for a p90 budget."""
    h = report.get("headline") or {}
    # A configured target's name stands for all its devices: 'onnxruntime/jetson' matches
    # 'jetson/cpu' and 'jetson/cuda' ('onnxruntime/jetson/cuda' names one).
    rows = [r for r in report["rows"] if r["runtime"] == runtime
            and (r["device"] == device or (r.get("target") and r["target"] == device))]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None, rows, ""
    batch = h.get("batch", min(r["batch"] for r in ok))
    ok = [r for r in ok if r["batch"] == batch] or ok
    shippable = [r for r in ok if deployable(r)] or [r for r in ok if not r.get("not_deployable")] or ok
    teacher = h.get("teacher_accuracy")
    tolerance = report["settings"].get("deploy_tolerance", 1.0)
    within = [r for r in shippable if teacher is None or r["accuracy"] >= teacher - tolerance]
    note = "" if within else f"no artifact there is within {tolerance:g} points of the teacher: fastest of all"
    return min(within or shippable, key=lambda r: r["p90_ms"]), rows, note


def _p90_budget(report: dict, name: str, key: str, limit: float, unit: str, value, note: str = "") -> Verdict:
    """A latency budget on the fastest shippable row of one 'runtime/device'; `value(row)` is
    what is judged (milliseconds, or a ratio to the teacher)."""
    runtime, _, device = key.partition("/")
    if not runtime or not device:
        return Verdict(name, FAIL, limit, unit, "max",
                       note=f"key '{key}' is not 'runtime/device' (e.g. 'openvino/cpu')")
    row, rows, shippable_note = _fastest_shippable(report, runtime, device)
    if row is not None:
        return _judge(name, value(row), limit, unit, "max", row["id"],
                      "; ".join(n for n in (shippable_note, note) if n))
    if rows:
        reasons = sorted({r["reason"] for r in rows if r.get("reason")})
        return Verdict(name, SKIP, limit, unit, "max",
                       note=f"not measured here: {'; '.join(reasons) or 'no measured row'}")
    known = sorted({f"{r['runtime']}/{r['device']}" for r in report["rows"]})
    return Verdict(name, FAIL, limit, unit, "max",
                   note=f"no row for '{key}' in the report (rows exist for: {', '.join(known)})")


def _drop_interval(h: dict) -> str:
    """The drop's interval, for reading the verdict: the budget is judged on the measured drop,
    since scoring the same val images again cannot narrow it."""
    ci = h.get("accuracy_change_ci")
    if not ci:
        return ""
    return (f"drop {-ci['high']:+.1f} to {-ci['low']:+.1f} points at {ci['level']:.0%} confidence "
            f"on {ci['images']} val images ({ci['b_only']} right only for the teacher, "
            f"{ci['a_only']} only for the deployed model)")


def evaluate(report: dict, check: Check) -> list[Verdict]:
    """One verdict per configured budget, in the order of the config."""
    h = report.get("headline")
    deployed = _row(report, h["deployed"]) if h else None
    missing = ("the report has no deployed model (no measured teacher or deployable row on the "
               f"target '{report['settings'].get('target')}'); run the benchmark on that device")
    out: list[Verdict] = []
    if check.min_accuracy is not None:
        out.append(_judge("min_accuracy", deployed["accuracy"], check.min_accuracy, "%", "min", deployed["id"])
                   if deployed else Verdict("min_accuracy", FAIL, check.min_accuracy, "%", "min", note=missing))
    if check.max_accuracy_drop is not None:
        out.append(_judge("max_accuracy_drop", -h["accuracy_change_points"], check.max_accuracy_drop, "points",
                          "max", f"{h['teacher']} -> {h['deployed']}", _drop_interval(h))
                   if deployed else Verdict("max_accuracy_drop", FAIL, check.max_accuracy_drop, "points",
                                            "max", note=missing))
    for key, limit in check.max_p90_ms.items():
        out.append(_p90_budget(report, f"max_p90_ms[{key}]", key, limit, "ms", lambda row: row["p90_ms"]))
    teacher = _row(report, h["teacher"]) if h else None
    for key, limit in check.max_p90_vs_teacher.items():
        name = f"max_p90_vs_teacher[{key}]"
        if teacher is None or teacher.get("status") != "ok":
            out.append(Verdict(name, FAIL, limit, "x", "max", note=missing))
            continue
        out.append(_p90_budget(report, name, key, limit, "x", lambda row: row["p90_ms"] / teacher["p90_ms"],
                               f"teacher {teacher['id']} p90 {teacher['p90_ms']:.3f} ms"))
    out += required_targets(report)
    out += not_shipped(report)
    if check.max_size_mb is not None:
        out.append(_judge("max_size_mb", deployed["size_bytes"] / 1e6, check.max_size_mb, "MB", "max",
                          deployed["id"])
                   if deployed else Verdict("max_size_mb", FAIL, check.max_size_mb, "MB", "max", note=missing))
    return out


def not_shipped(report: dict) -> list[Verdict]:
    """One line per artifact that was built or tried but must not ship (an INT8 file outside
    quantize.max_accuracy_drop, an export that failed its parity check), with why. These are not
    budgets: they never fail the gate by themselves; the budgets judge what was shipped."""
    why = held_back(report["rows"])
    return [Verdict(f"not_shipped[{name}]", SKIP, 0.0, "", "max", note=reason) for name, reason in why.items()]


def required_targets(report: dict) -> list[Verdict]:
    """One verdict per target marked required: pass with its fastest p90 when it has measured
    rows, fail with the reasons when none was measured (unreachable, no runtime, a killed run)."""
    out = []
    names = dict.fromkeys(r["target"] for r in report["rows"] if r.get("target") and r.get("target_required"))
    for name in names:
        rows = [r for r in report["rows"] if r.get("target") == name]
        ok = [r for r in rows if r["status"] == "ok"]
        if ok:
            best = min(ok, key=lambda r: r["p90_ms"])
            out.append(Verdict(f"required_target[{name}]", PASS, 1, "rows", "min", len(ok),
                               best["id"], f"{len(ok)} of {len(rows)} rows measured"))
        else:
            reasons = "; ".join(sorted({r.get("reason") or "no reason" for r in rows}))
            out.append(Verdict(f"required_target[{name}]", FAIL, 1, "rows", "min",
                               note=f"required target '{name}' was not measured: {reasons}"))
    return out
