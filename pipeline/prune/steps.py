"""The steps of iterative pruning, and the records the prune stage keeps of them.

Each step scores channels, prunes on the schedule, re-estimates BatchNorm statistics and
recovers accuracy by distillation; the accuracy budget decides which step ships, and the
summary compares the shipped model with the unpruned student.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

from pipeline.config import Config, Importance
from pipeline.measure.accuracy_interval import describe, paired_difference

logger = logging.getLogger("pipeline.stages.prune")   # the stage's voice in the run's log


def _log(msg: str) -> None:
    logger.info(f"  prune: {msg}")


@dataclass
class StepSetup:
    """What every pruning step needs: the config, the plan, data, the recovery loss, the baseline."""

    cfg: Config
    plan: object             # PrunePlan
    example: object          # one zero input, for tracing and counting MACs
    device: object
    train: object            # recovery training set
    val: object
    calib: object            # un-augmented training images for BatchNorm statistics
    loss: object             # DistillLoss against the teacher
    protected: list
    macs0: int = 0
    params0: int = 0
    right0: object = None    # per val image, whether the unpruned student is right


def prune_step(i: int, n: int, ratio: float, student, pruner, s: StepSetup) -> dict:
    """One step: score (taylor), prune on the schedule, re-estimate BatchNorm statistics, recover.

    The last step tops up to the MAC target if the schedule fell short of it (global or taylor
    pruning can keep different widths than the one-shot search predicted)."""
    from pipeline.prune.recover import accumulate_gradients, recalibrate_batchnorm, recover
    from pipeline.prune.structured import macs_and_params, prune_to_macs
    from pipeline.train.loop import correct
    p = s.cfg.prune
    t0 = time.time()
    # Taylor scores need gradients of the current weights: step 1 reuses those run() took for the
    # ratio search (same weights, same batches); later steps score the recovered weights.
    if s.plan.importance == Importance.taylor and i > 1:
        accumulate_gradients(student, s.loss, s.train, p.recover.batch_size, s.device)
    student.cpu()
    pruner.step()
    target = int(s.macs0 * (1 - ratio))
    topped_up = i == n and macs_and_params(student, s.example)[0] > target
    if topped_up:
        prune_to_macs(student, s.example, target, s.plan, s.protected,
                      {name: 0.0 for name in s.plan.layer_ratios})
    student.zero_grad(set_to_none=True)
    macs, n_params = macs_and_params(student, s.example)
    recalibrate_batchnorm(student, s.calib, p.recover.batch_size, s.device)
    _log(f"step {i}/{n}: {1 - macs / s.macs0:.1%} of MACs removed")
    refit_before = _with_refitted_head(student, s) if p.refit_head else None
    fit = recover(student, s.train, s.val, p.recover, s.device, s.cfg.run.seed, s.loss,
                  f"prune recover {i}/{n}", s.cfg.run.num_workers)
    right, top1, heads = correct(student, s.val, s.device), fit.best_top1, None
    if p.refit_head:
        right, top1, heads = _keep_best_head(student, (right, fit.best_top1), refit_before,
                                             _with_refitted_head(student, s))
    change = paired_difference(right, s.right0)   # image by image
    student.cpu()
    return {"step": i, "macs": macs, "params": n_params, "macs_removed": round(1 - macs / s.macs0, 4),
            "params_removed": round(1 - n_params / s.params0, 4), "topped_up_to_target": topped_up,
            "val_top1_before_recovery": fit.history[0]["val_top1"], "val_top1": top1,
            "accuracy_change": change, "refit_head": heads,
            "recovery": {"best_epoch": fit.best_epoch, "history": fit.history,
                         "seconds": round(fit.seconds, 2)},
            "seconds": round(time.time() - t0, 2)}


def _with_refitted_head(model, s: StepSetup) -> tuple:
    """(per-image val correctness, val top-1, a copy of `model` whose classifier is a linear probe
    of its frozen features)."""
    from pipeline.train.loop import correct, top1_of
    from pipeline.train.probe import linear_probe
    clone = copy.deepcopy(model)
    linear_probe(clone, s.calib, s.val, s.device, s.cfg.finetune.probe_l2, "pruned head")
    right = correct(clone, s.val, s.device)
    return right, top1_of(right), clone


def _keep_best_head(student, recovered: tuple, before: tuple, after: tuple) -> tuple:
    """Load into `student` the best on val of: the recovered model, the pruned model with a head
    refitted before recovery, the recovered model with a head refitted to its features. Each is
    (per-image correctness, val top-1, model or None for `student` itself); returns the kept
    one's correctness and top-1, and the record.

    Pruning leaves the old head reading features it was not trained on. Refitting it costs a probe
    (seconds); whether recovery should start from it depends on the data, measured: on flowers5
    (350 photos, Lite0, 10% of MACs removed) the refitted head gives 87.4% where the old one
    gives 79.4% and recovery epochs never beat either, while on digits (1,347 images, 29% removed)
    recovery from the old head reaches 99.6% and from the refitted one only 96.7%. So recovery
    keeps its own trajectory, and the refitted heads are candidates beside it."""
    options = {"recovered": (*recovered, None), "refit before recovery": before,
               "refit after recovery": after}
    kept = max(options, key=lambda k: options[k][1])      # ties keep the recovered model
    right, top1, model = options[kept]
    if model is not None:
        student.load_state_dict(model.state_dict())
    return right, top1, {"val_top1": {k: v[1] for k, v in options.items()}, "kept": kept}


def compare(s: StepSetup, student, steps: list[dict], latency: dict, top1_0: float):
    """(before, after, summary): params, MACs, val top-1 and latency of the unpruned student and
    the final model, and the ratios between them."""
    from pipeline.prune.structured import macs_and_params
    macs1, params1 = macs_and_params(student, s.example)
    top1_1 = steps[-1]["val_top1"] if steps else top1_0
    before = {"params": s.params0, "macs": s.macs0, "val_top1": top1_0, "latency": latency.get("unpruned")}
    after = {"params": params1, "macs": macs1, "val_top1": top1_1,
             "latency": latency.get(f"step{len(steps)}" if steps else "unpruned")}
    summary = {"macs_removed": round(1 - macs1 / s.macs0, 4),
               "params_removed": round(1 - params1 / s.params0, 4),
               "accuracy_delta_points": round(top1_1 - top1_0, 4)}
    if before["latency"] and after["latency"]:
        for q in ("p50", "p90"):
            summary[f"speedup_{q}"] = round(before["latency"][f"{q}_ms"] / after["latency"][f"{q}_ms"], 3)
    return before, after, summary


def within_budget(step: dict, top1_0: float, max_drop: float | None) -> bool:
    """Whether a recovered step keeps prune.max_accuracy_drop; says so when it does not."""
    step["accuracy_drop_points"] = round(top1_0 - step["val_top1"], 4)
    if max_drop is None or step["accuracy_drop_points"] <= max_drop:
        return True
    change = step.get("accuracy_change")
    noise = f"; {describe(change, 'pruned', 'unpruned')}" if change else ""
    _log(f"step {step['step']} lost {step['accuracy_drop_points']:.2f} points after recovery "
         f"(val {step['val_top1']:.2f}% vs {top1_0:.2f}% unpruned{noise}; prune.max_accuracy_drop "
         f"{max_drop:g}): no further pruning")
    return False


def accuracy_budget(steps: list[dict], kept: int, n: int, top1_0: float, max_drop: float | None) -> dict:
    """The accuracy budget's record: which step ships and why, with a warning when it backed off."""
    out = {"max_accuracy_drop": max_drop, "steps_planned": n, "steps_kept": kept,
           "backed_off": kept < n, "warning": None}
    if kept < n:
        shipped = (f"step {kept} ({steps[kept - 1]['macs_removed']:.1%} of MACs removed, val "
                   f"{steps[kept - 1]['val_top1']:.2f}%)" if kept else f"the unpruned student ({top1_0:.2f}%)")
        change = steps[kept].get("accuracy_change")
        noise = f": {describe(change, 'pruned', 'unpruned')}" if change else ""
        out["warning"] = (f"prune backed off: step {kept + 1} of {n} lost "
                          f"{steps[kept]['accuracy_drop_points']:.2f} points (> prune.max_accuracy_drop "
                          f"{max_drop:g}{noise}); shipping {shipped}. Lower prune.ratio, add prune.recover "
                          "epochs, or raise prune.max_accuracy_drop")
        logger.warning(f"prune: {out['warning']}")
    return out


def budget_verdict(budget, after: dict, budget_ms: float, is_main: bool) -> dict:
    """The search record plus whether the final run's measurement still meets the budget."""
    met = bool(after["latency"]) and after["latency"]["p50_ms"] <= budget_ms
    if is_main and not met:
        logger.warning(f"prune: the search's pick met {budget_ms} ms, but the final run measured "
                       f"{after['latency']['p50_ms']:.3f} ms (p50); the machine may be busier now than "
                       "during the search")
    return {**budget.to_dict(), "met_in_final_run": met}
