"""Between pruning steps: gradients for Taylor importance, and recovery fine-tuning."""
from __future__ import annotations

import torch

from pipeline.config import Train
from pipeline.train.loop import Indexed

TAYLOR_BATCHES = 4   # batches of the recovery batch size whose gradients score channels (taylor)
BN_BATCHES = 8       # batches that re-estimate BatchNorm statistics after each pruning step


def accumulate_gradients(model, loss_fn, dataset, batch_size: int, device,
                         batches: int = TAYLOR_BATCHES) -> int:
    """Sum the loss gradients of the first `batches` batches into `.grad` (eval-mode BN, so the
    scores do not move running statistics). The batches are the dataset's first samples, in
    order, so every process of a distributed run scores channels identically. Returns the
    number of samples used."""
    was_training = model.training
    model.to(device).eval()
    model.zero_grad(set_to_none=True)
    loader = torch.utils.data.DataLoader(Indexed(dataset), batch_size=batch_size, shuffle=False)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        if i >= batches:
            break
        loss, _ = loss_fn(model, x.to(device), y.to(device), idx, 0.0)
        loss.backward()
        seen += len(y)
    model.train(was_training)
    return seen


@torch.no_grad()
def recalibrate_batchnorm(model, dataset, batch_size: int, device, batches: int = BN_BATCHES) -> int:
    """Re-estimate every BatchNorm's running statistics on training images.

    Removing channels changes what each later layer sees, so the running means and variances
    recorded before pruning no longer match and eval-mode accuracy collapses until training has
    slowly moved them. A cumulative average over a few batches (BN layers in train mode, the
    rest in eval mode, no weight changes) fixes them at once. Returns the samples used.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    model.to(device).eval()
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average over the batches below
        m.train()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    seen = 0
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
        seen += len(x)
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)
    return seen


def recover(model, train_set, val_set, cfg: Train, device, seed: int, loss_fn, desc: str,
            num_workers: int = 0):
    """Fine-tune a freshly pruned model with `loss_fn` (distillation from the teacher); returns
    the FitResult, with the best-on-val weights loaded into `model` (the pruned weights before
    recovery count too: recovery never ships a worse model)."""
    from pipeline.models.layers import param_groups
    from pipeline.train.loop import fit
    model.zero_grad(set_to_none=True)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, 1.0)
    return fit(model, train_set, val_set, cfg, device, seed, groups, loss_fn=loss_fn, desc=desc,
               num_workers=num_workers, start_is_candidate=True)

