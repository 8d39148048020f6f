"""Relative budgets: each row against the same row (by id) of a baseline report.

    max_p90_regression   p90 new / p90 baseline, with its interval, <= 1 + limit
    min_accuracy_delta   top-1 new - top-1 baseline (points)       >= limit

A latency verdict is pass when the whole interval is within the limit, fail when the whole
interval is beyond it, and inconclusive when the interval straddles it. The interval is the
bootstrap interval of the ratio widened by both runs' noise floors (pipeline.gate.intervals).
Accuracy is scored on the same val images in both runs, so its change is exact: pass or fail.
Rows on another machine or software (latency) or on other data (both) are "not comparable",
never a failure. When other processes used clearly more CPU during one run than during the other
(runtimes.host_load, more than LOAD_TOLERANCE cores apart), a latency fail (this run busier) or
pass (the baseline busier) is only inconclusive: the load, not the code, may explain it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import Check
from pipeline.gate import intervals
from pipeline.gate.baseline import data_differences, environment_differences
from pipeline.gate.budgets import FAIL, PASS, SKIP, Verdict

INCONCLUSIVE, NOT_COMPARABLE = "inconclusive", "not comparable"
LOAD_TOLERANCE = 0.25   # cores of other processes' CPU two runs may differ by and still be judged


@dataclass
class RelativeVerdict(Verdict):
    interval: dict | None = None      # the judged quantity's interval (estimate, low, high, level)
    baseline: str = ""                # the baseline report's path

    @property
    def message(self) -> str:
        head = f"{self.status.upper()} {self.name}"
        op = ">=" if self.kind == "min" else "<="
        if self.measured is None:
            return f"{head}: {self.note}"
        if self.interval:
            i = self.interval
            value = (f"ratio {i['estimate']:.3f} [{i['level']:.0%} CI {i['low']:.3f}, {i['high']:.3f}] "
                     f"vs the baseline, limit {op} {self.limit:.3f}")
        else:
            value = f"{self.measured:+.2f} {self.unit} vs the baseline, limit {op} {self.limit:+.2f} {self.unit}"
        return f"{head}: {value}" + (f"; {self.note}" if self.note else "")


def judge_ratio(interval, limit: float) -> str:
    """pass / fail / inconclusive of a ratio's interval against a maximum."""
    return PASS if interval.high <= limit else FAIL if interval.low > limit else INCONCLUSIVE


def _others(report: dict) -> float | None:
    return (((report.get("host_load") or {}).get("during")) or {}).get("others_cores")


def load_shift(baseline: dict, report: dict) -> float:
    """Other processes' CPU (cores) during this run minus during the baseline's; 0 when unknown."""
    a, b = _others(baseline), _others(report)
    return b - a if a is not None and b is not None else 0.0


def _latency(name: str, base: dict, new: dict, limit: float, widen: float, env: list[str],
             shift: float = 0.0) -> RelativeVerdict:
    subject = new["id"]
    if env:
        return RelativeVerdict(name, NOT_COMPARABLE, limit, "x", "max", subject=subject,
                               note=f"environment differs: {'; '.join(env)}")
    ratio = intervals.ratio(new, base, "p90", widen)
    if ratio is None:
        return RelativeVerdict(name, NOT_COMPARABLE, limit, "x", "max", subject=subject,
                               note="no per-run samples in one of the reports (made before they "
                                    "were kept); re-run that report's benchmark")
    status = judge_ratio(ratio, limit)
    note = f"p90 {base['p90_ms']:.3f} -> {new['p90_ms']:.3f} ms"
    if (status == FAIL and shift > LOAD_TOLERANCE) or (status == PASS and shift < -LOAD_TOLERANCE):
        status = INCONCLUSIVE
        busier = "this run" if shift > 0 else "the baseline"
        note += (f"; the host was busier during {busier} (other processes {abs(shift):.2f} cores "
                 f"more), which may explain it: re-measure on a quieter host")
    if widen:
        note += f"; interval widened ×/÷{math.exp(widen):.2f} by the noise floors"
    if status == INCONCLUSIVE and "busier" not in note:
        note += "; the interval straddles the limit"
    return RelativeVerdict(name, status, limit, "x", "max", ratio.estimate, subject, note, ratio.to_dict())


def _accuracy(name: str, base: dict, new: dict, limit: float) -> RelativeVerdict:
    delta = new["accuracy"] - base["accuracy"]
    return RelativeVerdict(name, PASS if delta >= limit else FAIL, limit, "points", "min", delta,
                           new["id"], f"top-1 {base['accuracy']:.2f}% -> {new['accuracy']:.2f}% on "
                           f"the same {new.get('accuracy_images')} val images")


def skipped(check: Check, why: str) -> list[RelativeVerdict]:
    """One skip verdict per configured relative budget, saying why (no baseline)."""
    out = []
    if check.max_p90_regression is not None:
        out.append(RelativeVerdict("max_p90_regression", SKIP, 1 + check.max_p90_regression, "x", "max", note=why))
    if check.min_accuracy_delta is not None:
        out.append(RelativeVerdict("min_accuracy_delta", SKIP, check.min_accuracy_delta, "points", "min", note=why))
    return out


def evaluate_relative(report: dict, baseline: dict, check: Check, where: str = "") -> list[RelativeVerdict]:
    """Relative verdicts of every row measured in both reports (matched by id), in report order."""
    base_rows = {r["id"]: r for r in baseline["rows"] if r["status"] == "ok"}
    pairs = [(base_rows[r["id"]], r) for r in report["rows"] if r["status"] == "ok" and r["id"] in base_rows]
    if not pairs:
        return skipped(check, f"no row measured in both this report and the baseline {where}")
    env = environment_differences(baseline.get("environment") or {}, report.get("environment") or {})
    widen = intervals.combined_margin(report.get("noise_floor"), baseline.get("noise_floor"), stat="p90")
    shift = load_shift(baseline, report)
    out: list[RelativeVerdict] = []
    for base, new in pairs:
        data = data_differences(base, new)
        for budget, limit in (("max_p90_regression", check.max_p90_regression),
                              ("min_accuracy_delta", check.min_accuracy_delta)):
            if limit is None:
                continue
            name = f"{budget}[{new['id']}]"
            if data:
                v = RelativeVerdict(name, NOT_COMPARABLE, limit if budget.startswith("min") else 1 + limit,
                                    "points" if budget.startswith("min") else "x",
                                    "min" if budget.startswith("min") else "max", subject=new["id"],
                                    note=f"scored on other data: {'; '.join(data)}")
            elif budget == "max_p90_regression":
                v = _latency(name, base, new, 1 + limit, widen, env, shift)
            else:
                v = _accuracy(name, base, new, limit)
            v.baseline = where
            out.append(v)
    return out
