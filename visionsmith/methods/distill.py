"""Knowledge distillation: a frozen teacher guides a student through its logits and/or features.

Logit distillation: Hinton, Vinyals & Dean, 2015 (arXiv:1503.02531): KL between the softened
teacher and student distributions, scaled by T^2 so its gradients keep their size as T changes.
Feature distillation: FitNets (Romero et al., 2015): a linear projector maps the student's pooled
features onto the teacher's, trained with MSE; the projector belongs to this method (it is saved
in the resume state, and is not part of the deployed student).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, DistillConfig
from ..losses.kd import kd_loss
from .registry import register_method

__all__ = ["Distill", "TeacherInput", "build", "kd_loss"]


class TeacherInput(nn.Module):
    """A student batch of [0, 1] pixels as the teacher wants them: its channel count and input size.
    [B, Cs, S, S] -> [B, Ct, St, St], still pixels (the teacher normalises them with its own
    ``pixel_norm``, whatever mean/std the student uses)."""

    def __init__(self, t_size: int, t_chans: int):
        super().__init__()
        self.size, self.chans = t_size, t_chans

    def forward(self, pix: torch.Tensor) -> torch.Tensor:
        if pix.shape[1] != self.chans:  # 1 <-> 3 channels: replicate or average (grayscale)
            pix = pix.expand(-1, self.chans, -1, -1) if pix.shape[1] == 1 else pix.mean(1, keepdim=True)
        if pix.shape[-1] != self.size:
            pix = F.interpolate(pix, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return pix


class Distill(nn.Module):
    """``forward({'image', 'label'}) -> {'loss', 'output', 'loss_ce', 'loss_kd'?, 'loss_feat'?}``.

    ``teacher`` is the dict of ``engine.build.build_teacher``.  Student and teacher both take the
    batch's [0, 1] pixels and normalise them each with their own ``pixel_norm``.  The teacher stays
    in eval mode and receives no gradient.
    """

    def __init__(self, model: nn.Module, teacher: dict, cfg: DistillConfig, task):
        super().__init__()
        self.model = model
        self.teacher = teacher["model"]
        self.teacher_input = TeacherInput(teacher["size"], teacher["in_chans"])
        self.cfg = cfg
        self.task = task
        if cfg.kind in ("feature", "both"):
            # Student pooled width -> teacher pooled width (FitNets' regressor, on pooled features).
            self.projector = nn.Linear(model.num_features, self.teacher.num_features)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # BatchNorm statistics and dropout of the teacher never change
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.task.target_key != "label":
            return self._dense(batch)
        x, c = batch["image"], self.cfg
        feats = self.model.forward_features(x)
        pooled = self.model.forward_head(feats, pre_logits=True)  # [B, D_s]
        logits = self.model.get_classifier()(pooled)  # [B, K]
        with torch.no_grad():
            tx = self.teacher_input(x)
            t_pooled = self.teacher.forward_head(self.teacher.forward_features(tx), pre_logits=True)  # [B, D_t]
            t_logits = self.teacher.get_classifier()(t_pooled) if c.kind != "feature" else None
        ce = self.task.loss(logits.float(), batch)
        out = {"output": logits, "loss_ce": ce.detach()}
        loss = ce
        if c.kind in ("logit", "both"):
            kd = kd_loss(logits.float(), t_logits.float(), c.temperature)
            loss = (1 - c.alpha) * ce + c.alpha * kd
            out["loss_kd"] = kd.detach()
        if c.kind in ("feature", "both"):
            feat = F.mse_loss(self.projector(pooled.float()), t_pooled.float())
            loss = loss + c.feature_weight * feat
            out["loss_feat"] = feat.detach()
        out["loss"] = loss
        return out

    def _dense(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dense tasks: the task's loss and its ``distill_loss`` of the student's output against the
        teacher's on the same images (per-pixel KL for segmentation, per-location for detection)."""
        x, c = batch["image"], self.cfg
        out = self.model(x)  # [B, K, H, W]; detection [B, N, 5 + K]
        with torch.no_grad():
            t_out = self.teacher(self.teacher_input(x))
        ce = self.task.loss(out.float(), batch)
        kd, parts = self.task.distill_loss(out, t_out, batch, c.temperature)
        return {"loss": (1 - c.alpha) * ce + c.alpha * kd, "output": out, "loss_ce": ce.detach(),
                "loss_kd": kd.detach(), **{f"kd_{k}": torch.tensor(v) for k, v in parts.items()}}


@register_method("distill", teacher=True, tasks=("classification", "segmentation", "detection"))
def build(cfg, model, task, teacher=None):
    """Knowledge distillation from a frozen teacher (logits and/or features)."""
    if task.target_key != "label" and cfg.distill.kind != "logit":
        raise ConfigError(f"distill.kind={cfg.distill.kind}: task {cfg.task} distils per-pixel logits only; "
                          "use distill.kind=logit")
    if hasattr(model, "loss_and_output") or (teacher and hasattr(teacher["model"], "loss_and_output")):
        raise ConfigError(f"method=distill: model {cfg.model.name} (det.head={cfg.det.head}) computes its own set or "
                          "two-stage loss; detection distillation needs one-stage FCOS detectors (det.head=fcos) as "
                          "student and teacher")
    if task.name == "detection" and teacher and teacher["size"] != cfg.data.image_size:
        raise ConfigError(f"distill.teacher {cfg.distill.teacher} was trained at data.image_size={teacher['size']}, "
                          f"this run at {cfg.data.image_size}: a detection teacher must see the student's image size")
    return Distill(model, teacher, cfg.distill, task)
