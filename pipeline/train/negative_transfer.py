"""Negative-transfer check: is the pretrained start actually better than training from scratch?

A pretrained backbone is a bet that its features suit the data. On data far from ImageNet
(spectrograms, depth maps, tiny grayscale glyphs) the bet can lose, and then fine-tuning is
worse than the same network trained from random weights with the same budget. This trains
that baseline on a quarter of the pretrained run's training time, compares the two at equal
training time, and says so, loudly, when the scratch run wins.
"""
from __future__ import annotations

import logging

from pipeline.config import Config, Strategy

logger = logging.getLogger(__name__)


def scratch_config(cfg: Config) -> Config:
    """The same architecture, data, budget and seed, from random weights.

    Every layer trains from the first epoch and at one learning rate: freezing or slowing
    random layers (linear probe, gradual unfreezing, layer decay) would handicap the baseline
    for reasons that have nothing to do with pretraining.
    """
    scratch = cfg.model_copy(deep=True)
    scratch.finetune.weights = "none"
    scratch.finetune.strategy = Strategy.full
    scratch.finetune.layer_decay = 1.0
    return scratch


# Of the pretrained run's training time. With the probe, evaluation and the scratch run's own
# last val pass around it, the check then costs about a fifth of the stage (measured: 23% at 1/3).
SCRATCH_SHARE = 0.25


def verdict(pretrained_top1: float, scratch_top1: float, backbone: str, same_budget_top1: float | None = None,
            budget_note: str = "with the same budget") -> dict:
    """Both accuracies, whether the pretrained start lost, and the warning text when it did.

    `same_budget_top1`: the pretrained run's best val top-1 within the time the scratch run had;
    the verdict compares at equal cost, so a shortened scratch run is not judged against a longer
    pretrained one."""
    reference = pretrained_top1 if same_budget_top1 is None else same_budget_top1
    negative = scratch_top1 > reference
    warning = None
    if negative:
        warning = (f"NEGATIVE TRANSFER: {backbone} trained from scratch reaches {scratch_top1:.2f}% val "
                   f"top-1, the pretrained start only {reference:.2f}% {budget_note}. "
                   f"The pretrained features do not suit this data: try another backbone, more "
                   f"epochs with strategy: full, or weights: none.")
    return {"pretrained_top1": pretrained_top1, "pretrained_top1_same_budget": reference,
            "scratch_top1": scratch_top1, "gain_points": round(reference - scratch_top1, 4),
            "negative_transfer": negative, "warning": warning}


def best_within(history: list[dict], seconds: float) -> float | None:
    """Best val top-1 a training run had reached `seconds` into its training."""
    reached = [row["val_top1"] for row in history if row.get("seconds", 0.0) <= seconds]
    return max(reached) if reached else None


def scratch_baseline(cfg: Config, device, pretrained) -> dict:
    """Train the from-scratch baseline for SCRATCH_SHARE of the pretrained run's training time and
    compare it with what the pretrained run had reached after the same time; prints a warning
    to stderr on negative transfer. `pretrained` is the pretrained run's FitResult."""
    from pipeline.train.teacher import train_teacher
    budget = max(1.0, pretrained.seconds * SCRATCH_SHARE)
    scratch = scratch_config(cfg)
    _, _, _, transferred = train_teacher(scratch, device, "none", "scratch", max_seconds=budget)
    result = transferred.fit
    spent = result.seconds
    same = best_within(pretrained.history, spent)
    note = f"after the same {spent:.0f} s of training"
    if same is None:    # the pretrained run's first scored epoch came later than that
        same, note = pretrained.best_top1, "with a longer budget"
    out = verdict(pretrained.best_top1, result.best_top1, cfg.finetune.backbone, same, note)
    out.update({"scratch_best_epoch": result.best_epoch, "scratch_history": result.history,
                "scratch_seconds": round(spent, 2), "scratch_budget_seconds": round(budget, 2),
                "scratch_stopped_by_budget": result.stopped_by_time,
                "budget": f"{SCRATCH_SHARE:.2f} of the pretrained run's {pretrained.seconds:.0f} s"})
    if out["negative_transfer"]:
        logger.warning(out["warning"])
    return out
