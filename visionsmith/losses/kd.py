"""Logit distillation (Hinton, Vinyals & Dean, 2015, arXiv:1503.02531): KL between the softened teacher and
student distributions, scaled by T^2 so its gradients keep their size as T changes.  Here (not in
``methods/distill.py``) so a task's ``distill_loss`` can use it: tasks sit below methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.  Both logits [B, K], or dense
    [B, K, H, W] (segmentation): then the mean is over every pixel (each pixel is one distribution)."""
    if student_logits.dim() > 2:  # [B, K, H, W] -> [B*H*W, K]
        k = student_logits.shape[1]
        student_logits = student_logits.movedim(1, -1).reshape(-1, k)
        teacher_logits = teacher_logits.movedim(1, -1).reshape(-1, k)
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t
