"""Multinomial logistic regression on frozen features: the head of the linear probe, and the
out-of-fold fits of the mislabel check (one fit, two users, no import between them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_logistic(z: torch.Tensor, y: torch.Tensor, classes: int, l2: float,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Multinomial logistic regression on standardised features z (full batch, L-BFGS).

    The loss is strictly convex (l2 > 0), so `start` (w, b), e.g. the solution at a neighbouring
    l2 or on overlapping folds, changes only how many steps it takes to reach the optimum."""
    if start is None:
        w = torch.zeros(classes, z.shape[1], dtype=torch.float64)
        b = torch.zeros(classes, dtype=torch.float64)
    else:
        w, b = (t.detach().to(torch.float64).clone() for t in start)
    w.requires_grad_()
    b.requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()
