"""`prune.importance: auto`: the criterion and the per-layer split chosen by accuracy kept per
millisecond saved, measured on this student, this data and the budget runtime.

Each candidate (every criterion, with global and with uniform per-layer ratios) prunes a copy of
the student one shot to the first step's share of MACs, has its BatchNorm statistics
re-estimated, and is scored on val without recovery: how much a criterion damages the network
before any training is the signal, and it is the same test for every candidate. All copies and
the unpruned student are then timed together in alternating rounds. The winner loses the fewest
points of val top-1 per millisecond of p50 saved; a candidate that is not faster beyond the noise
saves nothing and only wins when none is (then the least damage wins).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

from pipeline.config import Importance

logger = logging.getLogger("pipeline.stages.prune")

CRITERIA = (Importance.taylor, Importance.l2, Importance.bn_scale)


def candidates(plan) -> list:
    """Every criterion, with global and with uniform per-layer ratios."""
    return [replace(plan, importance=kind, global_pruning=scope)
            for kind in CRITERIA for scope in (True, False)]


def name_of(plan) -> str:
    return f"{plan.importance.value}/{'global' if plan.global_pruning else 'uniform'}"


def _cost(c: dict, top1_0: float) -> tuple:
    """Sort key: faster beyond the noise first, then points lost per millisecond saved, then the
    least damage."""
    saved = c["ms_saved"]
    faster = c["verdict"] == "faster" and saved > 0
    lost = max(0.0, top1_0 - c["val_top1"])
    return (not faster, lost / saved if faster else lost, lost)


def search_criterion(student, s, probe, pre, share: float, work: Path, evaluate,
                     top1_0: float) -> tuple:
    """(the chosen PrunePlan, the record of every candidate). `s` is the stage's StepSetup (its
    plan's importance is auto); `share` is the first step's share of MACs to remove; `student`
    carries Taylor gradients; `evaluate(model) -> val top-1`; `top1_0` is the student's own."""
    from pipeline.prune.recover import recalibrate_batchnorm
    from pipeline.prune.structured import PruneError, macs_and_params, prune_to_macs
    target = int(s.macs0 * (1 - share))
    models, scored, unusable = {"unpruned": copy.deepcopy(student)}, {}, {}
    for plan in candidates(s.plan):
        name = name_of(plan)
        clone = copy.deepcopy(student)
        for src, dst in zip(student.parameters(), clone.parameters()):   # taylor scores need them
            dst.grad = None if src.grad is None else src.grad.clone()
        try:
            prune_to_macs(clone, s.example, target, plan, s.protected)
        except PruneError as exc:    # e.g. global scores that would empty some layers first
            unusable[name] = str(exc)
            logger.info(f"  prune: criterion {name}: cannot reach the target ({exc})")
            continue
        clone.zero_grad(set_to_none=True)
        recalibrate_batchnorm(clone, s.calib, s.cfg.prune.recover.batch_size, s.device)
        clone.cpu()
        macs = macs_and_params(clone, s.example)[0]
        scored[name] = {"plan": plan, "macs_removed": round(1 - macs / s.macs0, 4),
                        "val_top1": evaluate(clone)}
        clone.cpu()
        models[name] = clone
        logger.info(f"  prune: criterion {name}: {scored[name]['macs_removed']:.1%} of MACs removed, "
                    f"val {top1_0:.2f}% -> {scored[name]['val_top1']:.2f}% before recovery")
    if not scored:
        raise PruneError(f"prune.importance auto: no criterion can remove {share:.1%} of the MACs: "
                         f"{next(iter(unusable.values()))}")
    sessions = {name: probe.session_for(m, pre, work, name.replace("/", "-")) for name, m in models.items()}
    latency = probe.measure_together(sessions, pre, s.cfg.prune.measure_rounds)
    base = latency["unpruned"]["p50_ms"]
    for name, c in scored.items():
        c["p50_ms"] = latency[name]["p50_ms"]
        c["ms_saved"] = round(base - c["p50_ms"], 4)
        c["verdict"] = latency[name]["vs_first"]["p50"]["verdict"]
        lost = top1_0 - c["val_top1"]
        c["points_per_ms"] = round(lost / c["ms_saved"], 3) if c["ms_saved"] > 0 else None
    best = min(scored, key=lambda n: _cost(scored[n], top1_0))
    record = {"unpruned_val_top1": top1_0, "unpruned_p50_ms": base, "share_of_macs": round(share, 4),
              "chosen": best, "candidates": {n: {k: v for k, v in c.items() if k != "plan"}
                                            for n, c in scored.items()},
              "unusable": unusable}
    c = scored[best]
    why = (f"{c['points_per_ms']} points lost per ms saved ({c['val_top1']:.2f}% before recovery, "
           f"p50 {base:.3f} -> {c['p50_ms']:.3f} ms)" if c["points_per_ms"] is not None else
           "no candidate was faster beyond the noise; the least damage")
    record["reason"] = why
    logger.info(f"  prune: importance auto chose {best}: {why}")
    return c["plan"], record
