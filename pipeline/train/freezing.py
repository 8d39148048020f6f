"""Which layer groups train when: linear probe, full fine-tuning, gradual unfreezing from the top."""
from __future__ import annotations

from pipeline.config import Strategy
from pipeline.models.layers import layer_groups


def trainable_groups(strategy: Strategy, n_groups: int, epoch: int, unfreeze_every: int) -> int:
    """How many groups, counted from the head down, train in this epoch."""
    if strategy == Strategy.linear_probe:
        return 1
    if strategy == Strategy.gradual_unfreeze:
        return min(n_groups, 1 + epoch // unfreeze_every)
    return n_groups


class Freezer:
    """Applies a strategy to a model at the start of each epoch."""

    def __init__(self, model, strategy: Strategy, unfreeze_every: int = 1):
        self.groups = layer_groups(model)
        self.strategy, self.unfreeze_every = strategy, unfreeze_every

    def apply(self, model, epoch: int) -> int:
        """Set requires_grad for this epoch; returns the number of trainable groups."""
        k = trainable_groups(self.strategy, len(self.groups), epoch, self.unfreeze_every)
        live = {n for names in self.groups[len(self.groups) - k:] for n in names}
        for name, p in model.named_parameters():
            p.requires_grad_(name in live)
        return k


def freeze_frozen_norms(model, all_norms: bool = False) -> None:
    """After model.train(): normalisation layers whose weights are frozen (or every one, with
    `all_norms`) keep their running stats."""
    import torch.nn as nn
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if all_norms or (params and not any(p.requires_grad for p in params)):
                m.eval()
