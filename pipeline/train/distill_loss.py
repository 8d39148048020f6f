"""Hinton et al.'s knowledge-distillation loss: soft teacher targets at temperature T plus hard labels,
and the loss callable the distill stage and prune recovery train with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T): the teacher's soft targets alone (no labels needed)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T
    changes (Hinton, Vinyals, Dean 2015).
    """
    soft = soft_loss(student_logits, teacher_logits, temperature)
    hard = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


class Renormalize:
    """Student-normalised pixels -> teacher-normalised pixels (same crop, other mean/std)."""

    def __init__(self, student_pre, teacher_pre, device):
        def col(v):
            return torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.identity = (tuple(student_pre.mean) == tuple(teacher_pre.mean)
                         and tuple(student_pre.std) == tuple(teacher_pre.std))
        self.scale = col(student_pre.std) / col(teacher_pre.std)
        self.shift = (col(student_pre.mean) - col(teacher_pre.mean)) / col(teacher_pre.std)

    def __call__(self, x):
        return x if self.identity else x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class DistillLoss:
    """kd_loss against cached teacher logits (by sample index), or the teacher on the same batch.

    With `unlabelled` (an endless iterator of image batches), every step also matches the teacher
    on one batch of unlabelled images, through the soft term alone (weighted by alpha)."""

    def __init__(self, teacher, cached, renorm: Renormalize, temperature: float, alpha: float,
                 label_smoothing: float, unlabelled=None):
        self.teacher, self.cached, self.renorm = teacher, cached, renorm
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing
        self.unlabelled = unlabelled
        self.teacher_batches = 0

    def __call__(self, model, x, y, idx, progress):
        logits = model(x)
        if self.cached is not None:
            soft = self.cached[idx].to(x.device, non_blocking=True)
        else:
            with torch.no_grad():
                soft = self.teacher(self.renorm(x))
            self.teacher_batches += 1
        loss = kd_loss(logits, soft, y, self.temperature, self.alpha, self.label_smoothing)
        if self.unlabelled is not None:
            loss = loss + self.alpha * self._unlabelled_term(model, x)
        return loss, logits

    def _unlabelled_term(self, model, like):
        x = next(self.unlabelled).to(like.device)
        if not like.is_contiguous():     # the labelled batch came NHWC: match it
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            soft = self.teacher(self.renorm(x))
        self.teacher_batches += 1
        return soft_loss(model(x), soft, self.temperature)
