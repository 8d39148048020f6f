"""Latency-budget mode: the least pruning whose measured latency meets the budget.

Each candidate ratio is pruned one-shot from the unpruned student, exported and timed on the
named runtime; bisection over the MAC ratio narrows to the smallest ratio that meets the
budget (latency falls with the ratio in steps, not smoothly, so every probe is a measurement,
never an estimate from MACs).

A probe meets the budget when its p50's whole 95% interval is at or under it, misses when the
whole interval is above; when the interval straddles the budget the host was too noisy to
decide: the probe counts as a miss (more pruning, never a model that may be too slow) and the
search records and logs it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from runtimes import errors

logger = logging.getLogger(__name__)


class BudgetNotMet(RuntimeError, errors.StageFailed):
    """No candidate up to the search's maximum ratio met the latency budget."""


@dataclass
class BudgetSearch:
    """The search's outcome: the chosen MAC ratio and every probe (ratio, p50, p90, MACs removed)."""

    budget_ms: float
    max_ratio: float
    ratio: float = 0.0
    trials: list[dict] = field(default_factory=list)

    def best(self) -> dict:
        return min(self.trials, key=lambda t: t["p50_ms"])

    @property
    def undecided(self) -> list[float]:
        """Ratios whose p50 interval straddled the budget (the host too noisy to decide)."""
        return [t["ratio"] for t in self.trials if t.get("decided") is False]

    def to_dict(self) -> dict:
        return {"latency_budget_ms": self.budget_ms, "max_ratio": self.max_ratio,
                "chosen_ratio": round(self.ratio, 4), "statistic": "p50", "trials": self.trials,
                "undecided": self.undecided}


def meets_budget(trial: dict, budget_ms: float) -> tuple[bool, bool]:
    """(meets, decided) of one probe: its p50 interval (`p50_ci`) against the budget; without
    an interval the point p50 decides."""
    ci = trial.get("p50_ci")
    if not ci:
        return trial["p50_ms"] <= budget_ms, True
    if ci["high"] <= budget_ms:
        return True, True
    return False, ci["low"] > budget_ms


def search_ratio(probe: Callable[[float], dict], budget_ms: float, max_ratio: float,
                 bisections: int, where: str) -> BudgetSearch:
    """Bisect the MAC ratio in [0, max_ratio] for the least pruning with p50 <= `budget_ms`.

    `probe(ratio)` prunes a copy to `ratio`, measures it and returns at least
    {"p50_ms", "p90_ms"}. Ratio 0 (the unpruned model) is tried first: if it already meets the
    budget nothing is pruned. Raises BudgetNotMet, naming the best latency reached, when
    `max_ratio` misses the budget too.
    """
    result = BudgetSearch(budget_ms, max_ratio)

    def meets(ratio: float) -> bool:
        trial = {"ratio": round(ratio, 4), **probe(ratio)}
        trial["meets_budget"], trial["decided"] = meets_budget(trial, budget_ms)
        if not trial["decided"]:
            ci = trial["p50_ci"]
            logger.warning(f"prune: host too noisy to decide whether ratio {ratio:.3f} meets "
                           f"{budget_ms:g} ms on {where}: p50 {trial['p50_ms']:.3f} ms [95% CI "
                           f"{ci['low']:.3f}, {ci['high']:.3f}] straddles it; counted as a miss")
        result.trials.append(trial)
        return trial["meets_budget"]

    if meets(0.0):
        return result
    if not meets(max_ratio):
        best = result.best()
        raise BudgetNotMet(
            f"no pruning ratio up to {max_ratio:g} met latency_budget_ms={budget_ms:g} on {where}; "
            f"best reached {best['p50_ms']:.3f} ms (p50) at ratio {best['ratio']:g} (unpruned: "
            f"{result.trials[0]['p50_ms']:.3f} ms). Relax prune.latency_budget_ms, raise "
            f"prune.budget_max_ratio, or pick a smaller student (distill.student)")
    lo, hi = 0.0, max_ratio
    for _ in range(bisections):
        mid = (lo + hi) / 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    result.ratio = hi
    return result


def search_budget(student, example, plan, protected: list[str], pre, probe, p, work_dir,
                  log=None) -> BudgetSearch:
    """`search_ratio` over one-shot pruned copies of `student`, each exported to `work_dir` (for
    runtimes that run files) and timed with `probe` (a `LatencyProbe`): its median of
    `p.measure_rounds` rounds."""
    import copy
    from pipeline.prune.structured import macs_and_params, prune_to_macs

    log = log or logger.info
    macs0 = macs_and_params(student, example)[0]

    def probe_ratio(ratio: float) -> dict:
        candidate = copy.deepcopy(student)
        if ratio > 0:
            prune_to_macs(candidate, example, int(macs0 * (1 - ratio)), plan, protected)
        session = probe.session_for(candidate, pre, work_dir, f"candidate_{round(ratio * 1e4):05d}")
        stats = probe.measure_together({"candidate": session}, pre, p.measure_rounds)["candidate"]
        removed = 1 - macs_and_params(candidate, example)[0] / macs0
        log(f"budget probe ratio {ratio:.3f}: {removed:.1%} of MACs removed, "
            f"p50 {stats['p50_ms']:.3f} ms, p90 {stats['p90_ms']:.3f} ms on {probe.label}")
        return {"macs_removed": round(removed, 4), "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"],
                "p50_ci": stats.get("p50_ci"), "rounds_p50_ms": stats["rounds_p50_ms"]}

    import torch
    threads = torch.get_num_threads()    # the torch runtime sets its own; training needs ours back
    try:
        return search_ratio(probe_ratio, p.latency_budget_ms, p.budget_max_ratio, p.budget_search_steps,
                            probe.label)
    finally:
        torch.set_num_threads(threads)
