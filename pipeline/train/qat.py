"""Quantization-aware fine-tuning: float weights that survive the INT8 rounding PTQ will apply.

Fake quantization mirrors the Q/DQ file ONNX Runtime writes for the same network: symmetric
per-output-channel weights (7-bit where the scheme reduces range) on every Conv and Linear, and
per-tensor uint8 on their inputs with the ranges calibration observes. Symmetric per-channel
rounding commutes with the per-channel BatchNorm scale folded into a conv at export, so rounding
the unfolded conv's weights is the rounding the exported file gets.

The float model, frozen, is the teacher: the loss is the KL divergence between its logits and the
fake-quantized model's on augmented views of training images (and unlabelled images when given),
so no labels are needed. The trained weights are then exported and quantized by plain PTQ, like
any other float model (the recipe of Jacob et al. 2018 and of NNCF's QAT, with the float model as
teacher as in Hinton's distillation).
"""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from pipeline.train.distill_loss import soft_loss
from runtimes.progress import progress

log = logging.getLogger(__name__)

QUANTIZED = (nn.Conv2d, nn.Linear)


class WeightRounding(nn.Module):
    """Symmetric per-output-channel rounding to `bits`, with a straight-through gradient."""

    def __init__(self, bits: int):
        super().__init__()
        self.qmax = 2 ** (bits - 1) - 1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / self.qmax
        rounded = torch.round(w / scale).clamp(-self.qmax, self.qmax) * scale
        return w + (rounded - w).detach()


def input_ranges(model: nn.Module, batches) -> dict[str, tuple[float, float]]:
    """Min and max of every Conv/Linear input over `batches` (the calibration images), as
    ONNX Runtime's min-max calibration sees them (the range always includes 0)."""
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(_, args):
            x = args[0].detach()
            lo, hi = ranges.setdefault(name, [0.0, 0.0])
            ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in model.named_modules() if isinstance(m, QUANTIZED)]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (lo, hi) for n, (lo, hi) in ranges.items()}


def _input_rounding(lo: float, hi: float):
    scale = max(hi - lo, 1e-8) / 255.0
    zero = int(round(-lo / scale))

    def hook(_, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero, 0, 255), *args[1:])
    return hook


class FakeQuantized:
    """`model` with its weights and layer inputs rounded as INT8 will round them, in place;
    `release()` removes the rounding and leaves the trained float weights."""

    def __init__(self, model: nn.Module, ranges: dict[str, tuple[float, float]], weight_bits: int):
        self.model, self.handles = model, []
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED)]
        for name, module in self.layers:
            parametrize.register_parametrization(module, "weight", WeightRounding(weight_bits))
            if name in ranges:
                self.handles.append(module.register_forward_pre_hook(_input_rounding(*ranges[name])))

    def release(self) -> nn.Module:
        for h in self.handles:
            h.remove()
        for _, module in self.layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        return self.model


def finetune_for_int8(model: nn.Module, calibration: torch.Tensor, views, weight_bits: int, epochs: int,
                      lr: float, max_seconds: float, batch_size: int = 32) -> tuple[nn.Module, dict]:
    """A copy of `model` fine-tuned under fake INT8 to match `model`'s logits on `views` (a
    dataset of image tensors), for at most `epochs` passes and `max_seconds`. Returns the copy
    (plain float modules again) and what happened. BatchNorm keeps its statistics (eval mode):
    they are folded into the convs at export."""
    t0 = time.perf_counter()
    teacher = model.eval()
    student = copy.deepcopy(model).eval()
    ranges = input_ranges(student, calibration.split(batch_size))
    quant = FakeQuantized(student, ranges, weight_bits)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, shuffle=True, drop_last=len(views) > batch_size,
                                         generator=torch.Generator().manual_seed(0))
    history, stopped = [], None
    for epoch in range(epochs):
        if hasattr(views, "set_epoch"):
            views.set_epoch(epoch)
        total, count = 0.0, 0
        for x in progress(loader, desc=f"quantize: QAT epoch {epoch + 1}/{epochs}", unit="batches", log=log):
            with torch.no_grad():
                target = teacher(x)
            loss = soft_loss(student(x), target, 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss) * len(x), count + len(x)
            if time.perf_counter() - t0 > max_seconds:
                stopped = f"time limit {max_seconds:g} s reached in epoch {epoch + 1}"
                break
        history.append({"epoch": epoch + 1, "kl": total / max(count, 1)})
        if stopped:
            break
    with torch.no_grad():
        first = soft_loss(quant.model(calibration[:batch_size]), teacher(calibration[:batch_size]), 1.0)
    trained = quant.release()
    return trained, {"epochs": history, "stopped": stopped, "layers": len(quant.layers), "weight_bits": weight_bits,
                     "calibration_kl_after": float(first), "seconds": round(time.perf_counter() - t0, 1)}
