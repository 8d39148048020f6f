"""Hinton et al.'s knowledge-distillation loss: soft teacher targets at temperature T plus hard labels."""
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
