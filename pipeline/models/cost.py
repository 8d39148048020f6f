"""What a model costs to run and to store: multiply-accumulates per image and parameters."""
from __future__ import annotations

from calibration.preprocess import Preprocessing


def count_params(model) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model, pre: Preprocessing) -> int:
    """Multiply-accumulates of one image at the model's input size (torch-pruning's counter)."""
    import torch
    import torch_pruning as tp
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(pre.input_shape(1)))
    model.train(was_training)
    return int(macs)
