"""Whole detectors from ``transformers``' DETR family, behind the detection task's output format.

    net = create_detector("rt_detr", num_classes=10)                    # a small RT-DETR, fresh
    net = create_detector("rt_detr", num_classes=10, d_model=128, backbone={"depths": [2, 2, 2, 2]})
    net = create_detector("hf_detector", num_classes=10, folder=FOLDER)  # any save_pretrained detector
    out = net(pixels)                 # [B, 3, H, W] in [0, 1] -> [B, Q, 5 + K]
    loss, out = net.loss_and_output({"image": ..., "boxes": [[M_i, 4] xyxy px], "labels": [[M_i]]})

``out`` is what the FCOS head gives (``models/heads/detection.py``), so decoding, metrics, predict and
serve are shared: per query the box as x1, y1, x2, y2 in input pixels, a centre-ness logit (DETR has
none: a constant whose sigmoid is 1, so a detection's score is the square root of its class
probability, the same ranking), and K class logits (sigmoid-based models: RT-DETR, Conditional and
Deformable DETR; DETR's softmax with a no-object class becomes per-class logits of its
probabilities).  Training uses the model's own set loss (Hungarian matching, ``transformers``' loss
functions need scipy), which is why these models carry ``loss_and_output``: the task's FCOS loss
does not apply to a set of queries (so method ``supervised`` only, as for every detector today).

Why not our own DETR: ``transformers`` maintains these (and their checkpoints); the wrapper only
converts boxes and pixels.  A folder is loaded with ``local_files_only`` (nothing is downloaded); its
class head is replaced when its class count differs from the data's (fine-tuning on new classes).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserError
from ..ops.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ._base import PixelNorm

DETECTORS = ("rt_detr", "hf_detector")
CENTRE_LOGIT = 30.0  # sigmoid(30) == 1 in float32: the FCOS centre-ness factor is a no-op for DETR queries

# A small RT-DETR that trains on two CPU cores: ResNet-18-like basic blocks (one per stage), d_model 128.
SMALL_RT_DETR = dict(num_queries=50, d_model=128, encoder_hidden_dim=128, decoder_in_channels=[128, 128, 128], encoder_ffn_dim=256, decoder_ffn_dim=256,
                     encoder_attention_heads=4, decoder_attention_heads=4, decoder_layers=3)
SMALL_BACKBONE = dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=32,
                      out_features=["stage2", "stage3", "stage4"])


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("the DETR-family detectors need transformers (pip install transformers)") from None
    return transformers


def _folder_norm(folder: Path) -> tuple[list[float], list[float]]:
    """The folder's image processor normalisation (mean, std on [0, 1] pixels); none: identity."""
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        c = json.loads(pp.read_text())
        if c.get("do_normalize", True) and c.get("image_mean") and c.get("image_std"):
            return list(c["image_mean"]), list(c["image_std"])
    return [0.0] * 3, [1.0] * 3


class HFDetector(nn.Module):
    """A ``transformers`` object-detection model: pixels in [0, 1] -> ``[B, Q, 5 + K]``."""

    onnx_exportable = False  # not tried yet: `visionsmith export` says so instead of failing inside the exporter

    def __init__(self, net: nn.Module, num_classes: int, mean, std):
        super().__init__()
        self.net, self.num_classes = net, int(num_classes)
        self.pixel_norm = PixelNorm(mean, std, 3)
        self.in_chans = 3

    def _as_boxes(self, logits: Tensor, pred_boxes: Tensor, hw) -> Tensor:
        """logits [B, Q, K] (or K + 1 with DETR's no-object class), pred_boxes [B, Q, 4] normalised
        cx, cy, w, h -> [B, Q, 5 + K]."""
        h, w = float(hw[0]), float(hw[1])
        boxes = cxcywh_to_xyxy(pred_boxes.float()) * pred_boxes.new_tensor([w, h, w, h], dtype=torch.float32)
        logits = logits.float()
        if logits.shape[-1] == self.num_classes + 1:  # softmax over K classes + no-object
            logits = torch.logit(logits.softmax(-1)[..., :self.num_classes], eps=1e-6)
        return torch.cat([boxes, torch.full_like(boxes[..., :1], CENTRE_LOGIT), logits], -1)

    def forward(self, x: Tensor) -> Tensor:
        o = self.net(pixel_values=self.pixel_norm(x))
        return self._as_boxes(o.logits, o.pred_boxes, x.shape[-2:])

    def loss_and_output(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The model's own set loss for ``batch`` (boxes xyxy in pixels, labels in [0, K)), and its output."""
        x = batch["image"]
        h, w = x.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=x.device)
        labels = []
        for b, lab in zip(batch["boxes"], batch["labels"]):
            labels.append({"class_labels": lab.to(x.device).long(), "boxes": xyxy_to_cxcywh(b.to(x.device).float()) / scale})
        o = self.net(pixel_values=self.pixel_norm(x), labels=labels)
        return o.loss, self._as_boxes(o.logits.detach(), o.pred_boxes.detach(), (h, w))


def create_detector(name: str, num_classes: int, folder: str | None = None, weights: bool = True,
                    in_chans: int = 3, **config) -> HFDetector:
    """``rt_detr``: a fresh RT-DETR (``config``: any ``RTDetrConfig`` field; ``backbone``: any
    ``RTDetrResNetConfig`` field; defaults: ``SMALL_RT_DETR``), or from ``folder``.  ``hf_detector``:
    any ``transformers`` object-detection folder (``folder`` required).  ``weights=False`` builds the
    folder's architecture only (a run being reloaded from its own checkpoint)."""
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}; these are whole detectors: {', '.join(DETECTORS)}")
    if in_chans != 3:
        raise UserError(f"model.in_chans={in_chans}: the DETR-family detectors take RGB images (in_chans 3)")
    tf = _transformers()
    if folder is not None:
        if config:
            raise UserError(f"model.kwargs {sorted(config)} with model.pretrained={folder}: a folder's config.json "
                            "defines the model; drop model.kwargs (or train a fresh one without the folder)")
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise UserError(f"model.pretrained={folder}: not a transformers save_pretrained folder (no config.json)")
        conf = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        if name == "rt_detr" and conf.model_type != "rt_detr":
            raise UserError(f"model.pretrained={folder} holds a {conf.model_type} model; use model.name=hf_detector")
        kw = dict(num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True)
        if weights:
            net = tf.AutoModelForObjectDetection.from_pretrained(path, **kw)
        else:
            conf.num_labels = num_classes
            net = tf.AutoModelForObjectDetection.from_config(conf)
        mean, std = _folder_norm(path)
        return HFDetector(net, num_classes, mean, std)
    if name == "hf_detector":
        raise UserError("model.name=hf_detector loads a transformers detector from a local folder: set "
                        "model.pretrained=FOLDER (a save_pretrained folder), or use model.name=rt_detr to train one")
    backbone = {**SMALL_BACKBONE, **config.pop("backbone", {})}
    if "encoder_in_channels" not in config:  # the channels of the stages the encoder reads ("stageN")
        config["encoder_in_channels"] = [backbone["hidden_sizes"][int(s[5:]) - 1] for s in backbone["out_features"]]
    try:
        conf = tf.RTDetrConfig(backbone_config=tf.RTDetrResNetConfig(**backbone), num_labels=num_classes,
                               use_pretrained_backbone=False, **{**SMALL_RT_DETR, **config})
    except TypeError as e:
        raise UserError(f"model.kwargs for rt_detr: {e}") from None
    return HFDetector(tf.RTDetrForObjectDetection(conf), num_classes, [0.0] * 3, [1.0] * 3)
