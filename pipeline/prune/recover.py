"""Between pruning steps: gradients for Taylor importance, and recovery fine-tuning."""
from __future__ import annotations

import torch

from pipeline.config import Train

TAYLOR_BATCHES = 4   # batches of the recovery batch size whose gradients score channels (taylor)


def accumulate_gradients(model, loss_fn, dataset, batch_size: int, device, batches: int = TAYLOR_BATCHES) -> int:
    """Sum the loss gradients of the first `batches` batches into `.grad` (eval-mode BN, so the
    scores do not move running statistics). The batches are the dataset's first samples, in
    order, so every process of a distributed run scores channels identically. Returns the
    number of samples used."""
    was_training = model.training
    model.to(device).eval()
    model.zero_grad(set_to_none=True)
    loader = torch.utils.data.DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=False)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        if i >= batches:
            break
        loss, _ = loss_fn(model, x.to(device), y.to(device), idx, 0.0)
        loss.backward()
        seen += len(y)
    model.train(was_training)
    return seen


def recover(model, train_set, val_set, cfg: Train, device, seed: int, loss_fn, desc: str,
            num_workers: int = 0):
    """Fine-tune a freshly pruned model with `loss_fn` (distillation from the teacher); returns
    the FitResult, with the best-on-val weights loaded into `model`."""
    from pipeline.models.layers import param_groups
    from pipeline.train.loop import fit
    model.zero_grad(set_to_none=True)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, 1.0)
    return fit(model, train_set, val_set, cfg, device, seed, groups, loss_fn=loss_fn, desc=desc,
               num_workers=num_workers)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i
