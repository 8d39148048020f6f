"""Transfer strategies: linear probe, LP-FT, gradual unfreezing, full fine-tuning, and `auto`,
which picks one from the data's size and how well the frozen features already separate it.

Every strategy that starts with the probe scores the probed model as epoch 0 of its
fine-tuning, so fine-tuning must beat the probe on val to replace it: what is kept is never
worse than the linear probe of the same backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.config import Finetune, Strategy
from pipeline.train.loop import FitResult

# auto's thresholds. Few images per class: fine-tuning memorises them; near-perfect probe: little
# left to win; poorly separating features (far from the pretraining domain): the lower layers
# must move, all at once when there is plenty of data, from the top down when there is not.
TOO_FEW_PER_CLASS = 10
SEPARATED = 0.98
FAR_DOMAIN = 0.5
PLENTY_PER_CLASS = 500


def separability(probe_top1: float, classes: int) -> float:
    """The probe's val accuracy rescaled so chance is 0 and perfect is 1."""
    chance = 100.0 / classes
    return (probe_top1 - chance) / (100.0 - chance)


def choose_strategy(min_per_class: int, classes: int, probe_top1: float) -> tuple[Strategy, str]:
    """(strategy, the reason in words) for `strategy: auto`."""
    sep = separability(probe_top1, classes)
    if min_per_class < TOO_FEW_PER_CLASS:
        return Strategy.linear_probe, (f"a class has only {min_per_class} training images (< "
                                       f"{TOO_FEW_PER_CLASS}): fine-tuning would memorise them")
    if sep >= SEPARATED:
        return Strategy.linear_probe, (f"the frozen features already separate the classes (probe "
                                       f"{probe_top1:.2f}%, separability {sep:.2f} >= {SEPARATED})")
    if sep < FAR_DOMAIN:
        if min_per_class >= PLENTY_PER_CLASS:
            return Strategy.full, (f"the frozen features separate the classes poorly (separability "
                                   f"{sep:.2f} < {FAR_DOMAIN}) and every class has >= "
                                   f"{PLENTY_PER_CLASS} images: every layer adapts at once")
        return Strategy.gradual_unfreeze, (
            f"the frozen features separate the classes poorly (separability {sep:.2f} < {FAR_DOMAIN}) "
            f"with few images ({min_per_class} in the smallest class): unfreeze from the top down")
    return Strategy.lp_ft, (f"the frozen features separate the classes well (probe {probe_top1:.2f}%, "
                            f"separability {sep:.2f}) and there are {min_per_class}+ images per class: "
                            "fine-tune gently from the fitted head (LP-FT)")


@dataclass
class TransferResult:
    fit: FitResult
    strategy: Strategy                   # what ran (auto resolved)
    record: dict = field(default_factory=dict)


def transfer(model, probe_sets: tuple, ft: Finetune, device, train_fn: Callable[..., FitResult],
             min_per_class: int) -> TransferResult:
    """Run `ft.strategy` on `model`.

    `probe_sets` = (train, val) at eval-mode pixels for the probe; `train_fn(strategy,
    start_is_candidate)` runs the fine-tuning phase (the caller owns optimiser, loss and freezer).
    """
    from pipeline.train.probe import linear_probe
    strategy, record = ft.strategy, {"configured": ft.strategy.value}
    probed = strategy in (Strategy.linear_probe, Strategy.lp_ft, Strategy.auto)
    probe = None
    if probed:
        probe = linear_probe(model, probe_sets[0], probe_sets[1], device, ft.probe_l2, "finetune",
                             audit_data=True)
        record["probe"] = probe.to_dict()
    if strategy == Strategy.auto:
        classes = len(probe_sets[0].classes)
        strategy, reason = choose_strategy(min_per_class, classes, probe.val_top1)
        record.update({"inputs": {"min_train_per_class": min_per_class, "classes": classes,
                                  "probe_val_top1": probe.val_top1,
                                  "separability": round(separability(probe.val_top1, classes), 4)},
                       "reason": reason})
    record["chosen"] = strategy.value
    if strategy == Strategy.linear_probe:
        result = FitResult(best_top1=probe.val_top1, best_epoch=0, seconds=probe.seconds,
                           history=[{"epoch": 0, "val_top1": probe.val_top1, "seconds": probe.seconds}])
    else:
        result = train_fn(strategy, probed)
    record["candidates"] = _candidates(strategy, probe, result)
    record["kept"] = "linear_probe" if probed and result.best_epoch == 0 else strategy.value
    return TransferResult(result, strategy, record)


def _candidates(strategy: Strategy, probe, result: FitResult) -> list[dict]:
    """What was scored on val: the probe (when run) and the fine-tuning that followed it."""
    out = []
    if probe is not None:
        out.append({"strategy": "linear_probe", "val_top1": probe.val_top1})
    if strategy != Strategy.linear_probe:
        tuned = [row["val_top1"] for row in result.history if row.get("epoch", 0) > 0]
        out.append({"strategy": strategy.value, "val_top1": max(tuned) if tuned else None,
                    "epochs": len(tuned)})
    return out
