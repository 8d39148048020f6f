"""An exponential moving average of a model's weights: a cheap ensemble over the last steps.

On small datasets single steps are noisy and validation accuracy jumps from epoch to epoch;
the average moves smoothly and usually generalises better than the last weights.
"""
from __future__ import annotations

import copy

import torch


class WeightAverage:
    """`decay` per step, ramped in as (1 + t) / (10 + t) so early steps are not frozen into the
    average; BatchNorm statistics and other buffers are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.module.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - d)
        for avg, b in zip(self.module.buffers(), model.buffers()):
            avg.copy_(b)
