"""The linear probe on cached frozen features: the backbone runs once over the data, then a
multinomial logistic regression is fitted to its features in seconds.

It is both a strategy of its own and the first half of LP-FT (Kumar et al., ICLR 2022):
fine-tuning from a fitted head moves the pretrained features far less than fine-tuning from a
random one, which matters most when there are only a few hundred images.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.train.logistic import fit_logistic

logger = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """The fitted head (weight [classes, features], bias) and how it scored on val per L2 strength."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    val_top1: float
    train_top1: float
    scores: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    lookalikes: list[dict] | None = None     # see pipeline.train.lookalikes; None: not looked for
    mislabels: dict | None = None            # see pipeline.train.mislabels; None: not looked for

    def to_dict(self) -> dict:
        out = {"val_top1": self.val_top1, "train_top1": self.train_top1, "l2": self.l2,
               "features": int(self.weight.shape[1]), "scores": self.scores,
               "seconds": round(self.seconds, 2)}
        if self.lookalikes is not None:
            out["lookalikes"] = self.lookalikes
        if self.mislabels is not None:
            out["mislabels"] = self.mislabels
        return out


def classifier_head(model) -> torch.nn.Linear:
    """The model's final linear layer (timm's `get_classifier()`, else the last nn.Linear)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no linear classifier head to probe")
        head = linears[-1]
    return head


@torch.no_grad()
def features(model, dataset, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs of the classifier head [N, D], targets [N]) over `dataset`, eval mode, in order."""
    from pipeline.train.loop import predict
    head, captured = classifier_head(model), []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].float().cpu()))
    try:
        _, targets = predict(model, dataset, device)
    finally:
        hook.remove()
    return torch.cat(captured), targets


def _top1(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    """Top-1 (%), computed as `loop.evaluate` computes it, so equal predictions give equal numbers."""
    return 100.0 * ((x @ w.T + b).argmax(1) == y).float().mean().item()


def fit_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
              classes: int, l2_grid: list[float]) -> ProbeResult:
    """Fit one head per L2 strength; keep the best val top-1 (ties: the lower val loss).

    Features are standardised for a well-conditioned fit, then the scaling is folded back into
    the weights, so the head applies to the raw features the network produces."""
    start = time.time()
    x, y = train[0].double(), train[1].long()
    xv, yv = val[0].double(), val[1].long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    best, scores = None, []
    for l2 in l2_grid:
        w, b = fit_logistic((x - mean) / std, y, classes, l2)
        w_raw = w / std
        b_raw = b - w_raw @ mean
        val_loss = F.cross_entropy(xv @ w_raw.T + b_raw, yv).item()
        score = {"l2": l2, "val_top1": _top1(xv, yv, w_raw, b_raw), "val_loss": round(val_loss, 5)}
        scores.append(score)
        if best is None or (score["val_top1"], -val_loss) > (best[0]["val_top1"], -best[0]["val_loss"]):
            best = (score, w_raw, b_raw)
    score, w, b = best
    return ProbeResult(weight=w.float(), bias=b.float(), l2=score["l2"], val_top1=score["val_top1"],
                       train_top1=_top1(x, y, w, b), scores=scores, seconds=time.time() - start)


def load_head(model, probe: ProbeResult) -> None:
    """Put a fitted probe's weights into the model's classifier head."""
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.copy_(probe.weight.to(head.weight.device))
        head.bias.copy_(probe.bias.to(head.bias.device))


def linear_probe(model, train_set, val_set, device, l2_grid: list[float], desc: str = "probe",
                 audit_data: bool = False) -> ProbeResult:
    """Fit the model's head on its frozen features (eval-mode pixels of both splits) and load
    the fitted head into the model. `audit_data`: also list, from the same features, val images
    that look like one training image and images whose label the features confidently disagree
    with (the sets must be TorchImageSets, for the ids)."""
    start = time.time()
    model.to(device)
    train, val = features(model, train_set, device), features(model, val_set, device)
    extract = time.time() - start
    result = fit_probe(train, val, len(train_set.classes), l2_grid)
    load_head(model, result)
    fitted = time.time() - start - extract
    audited = ""
    if audit_data:
        from pipeline.train.lookalikes import lookalikes
        from pipeline.train.mislabels import likely_mislabels
        result.lookalikes = lookalikes(train[0].numpy(), val[0].numpy(), train_set.images.ids,
                                       val_set.images.ids)
        t0 = time.time()
        result.mislabels = likely_mislabels((train[0].numpy(), train[1].numpy()),
                                            (val[0].numpy(), val[1].numpy()),
                                            (train_set.images.ids, val_set.images.ids),
                                            list(train_set.classes), result.l2)
        result.mislabels["seconds"] = round(time.time() - t0, 2)
        audited = f", mislabel check {result.mislabels['seconds']:.1f}s"
    result.seconds = time.time() - start
    logger.info(f"  {desc}: linear probe on {train[0].shape[1]} frozen features of {len(train_set)} images: "
                f"val {result.val_top1:.2f}% (l2 {result.l2:g}; features {extract:.1f}s, fit "
                f"{fitted:.1f}s{audited})")
    return result
