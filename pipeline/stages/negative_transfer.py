"""Negative-transfer check: is the pretrained start actually better than training from scratch?

A pretrained backbone is a bet that its features suit the data. On data far from ImageNet
(spectrograms, depth maps, tiny grayscale glyphs) the bet can lose, and then fine-tuning is
worse than the same network trained from random weights with the same budget. This trains
that baseline and says so, loudly, when it wins.
"""
from __future__ import annotations

import sys

from pipeline.config import Config, Strategy


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


def verdict(pretrained_top1: float, scratch_top1: float, backbone: str) -> dict:
    """Both accuracies, whether the pretrained start lost, and the warning text when it did."""
    negative = scratch_top1 > pretrained_top1
    warning = None
    if negative:
        warning = (f"NEGATIVE TRANSFER: {backbone} trained from scratch reaches {scratch_top1:.2f}% val "
                   f"top-1, the pretrained start only {pretrained_top1:.2f}% with the same budget. "
                   f"The pretrained features do not suit this data: try another backbone, more "
                   f"epochs with strategy: full, or weights: none.")
    return {"pretrained_top1": pretrained_top1, "scratch_top1": scratch_top1,
            "gain_points": round(pretrained_top1 - scratch_top1, 4),
            "negative_transfer": negative, "warning": warning}


def scratch_baseline(cfg: Config, device, pretrained_top1: float) -> dict:
    """Train the from-scratch baseline and compare; prints a warning to stderr on negative transfer."""
    from pipeline.stages.finetune import train_teacher
    scratch = scratch_config(cfg)
    _, _, _, result = train_teacher(scratch, device, "none", "scratch")
    out = verdict(pretrained_top1, result.best_top1, cfg.finetune.backbone)
    out.update({"scratch_best_epoch": result.best_epoch, "scratch_history": result.history,
                "scratch_seconds": round(result.seconds, 2)})
    if out["negative_transfer"]:
        print(f"WARNING: {out['warning']}", file=sys.stderr, flush=True)
    return out
