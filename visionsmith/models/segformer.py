"""SegFormer (Mix Transformer encoder + all-MLP decoder) from ``transformers``, as a mask model.

Xie, Wang, Yu, Anandkumar, Alvarez, Luo, "SegFormer: Simple and Efficient Design for Semantic
Segmentation with Transformers", NeurIPS 2021 (arXiv:2105.15203).

``SegFormer.forward(x [B, C, H, W]) -> logits [B, K, H, W]`` (``x``: [0, 1] pixels, normalised inside by
``pixel_norm`` with the checkpoint's mean/std): the decode head predicts at 1/4 of the
input; the wrapper resizes bilinearly (``align_corners=False``) to the input size, so every mask
model returns logits at the mask's resolution.

Submodule names are those of ``SegformerForSemanticSegmentation`` under ``model.``:
``model.segformer.stages.{0..3}`` (the encoder: LoRA targets such as ``q_proj``), ``model.decode_head``
(the MLP decoder) and ``model.decode_head.classifier`` (1x1 conv, the new part in transfer learning).

Sources, never a model hub (the rules of ``hf.py``): a random MiT-b0..b5-sized model from a
``SegformerConfig``, or a local folder written by ``save_pretrained`` (``SegFormer.save_pretrained``
writes one, with the mean/std in ``preprocessor_config.json``).  From a folder, a decode head with
another class count, or none (a folder saved from ``SegformerModel`` or
``SegformerForImageClassification``: the encoder alone), is freshly initialised; any other missing
or mis-shaped weight is an error.  Not registered in the model registry here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ._base import IMAGENET_MEAN, IMAGENET_STD, set_pixel_norm
from .hf import _adapt_in_chans, _no_hub, _read_preprocessor
from .weights import WeightLoadError

__all__ = ["SEGFORMER_VARIANTS", "SegFormer", "segformer"]

# MiT-b0..b5 (paper Table 6 / the nvidia/mit-b* configs); heads (1, 2, 5, 8) and sr (8, 4, 2, 1) for all
SEGFORMER_VARIANTS = {
    "b0": dict(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256),
    "b1": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=256),
    "b2": dict(depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b3": dict(depths=[3, 4, 18, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b4": dict(depths=[3, 8, 27, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b5": dict(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
}


class SegFormer(nn.Module):
    """A ``SegformerForSemanticSegmentation`` (``self.model``) returning full-resolution logits.

    ``forward(x [B, C, H, W]) -> [B, num_classes, H, W]``, ``x`` [0, 1] pixels.
    ``forward_intermediates(x, indices=None)`` -> the encoder's stage outputs ``[B, C_i, H/s_i, W/s_i]``
    at strides 4, 8, 16, 32, described by ``feature_info`` (so a ``models.heads`` decoder can sit on
    the MiT encoder too).  ``pretrained_cfg``: ``mean``/``std`` (what ``pixel_norm``, the first step of
    ``forward`` and ``forward_intermediates``, normalises the pixels with), ``input_size`` (the
    paper's 512 px ADE20K crop), ``weights``.
    """

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights: str | None = None):
        super().__init__()
        self.model = model
        cfg = model.config
        self.num_classes = int(cfg.num_labels)
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std), "input_size": (cfg.num_channels, 512, 512),
                               "weights": weights}
        set_pixel_norm(self, cfg.num_channels)
        reduction, self.feature_info = 1, []
        for i, (c, s) in enumerate(zip(cfg.hidden_sizes, cfg.strides)):
            reduction *= s
            self.feature_info.append({"num_chs": int(c), "reduction": reduction,
                                      "module": f"model.segformer.stages.{i}"})

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(pixel_values=self.pixel_norm(x)).logits  # [B, K, ceil(H/4), ceil(W/4)]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> list[Tensor]:
        hidden = self.model.segformer(pixel_values=self.pixel_norm(x), output_hidden_states=True).hidden_states
        return list(hidden) if indices is None else [hidden[i] for i in indices]

    def get_classifier(self) -> nn.Conv2d:
        return self.model.decode_head.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised ``model.decode_head.classifier`` for ``num_classes`` outputs."""
        old = self.model.decode_head.classifier
        self.model.decode_head.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        self.model.config.num_labels = self.num_classes = num_classes

    def save_pretrained(self, folder: str | Path) -> None:
        """``config.json`` + safetensors weights (``transformers``' format) and the mean/std as a
        ``preprocessor_config.json``: ``segformer(pretrained=folder)`` rebuilds this model."""
        self.model.save_pretrained(str(folder))
        pre = {"image_mean": list(self.pretrained_cfg["mean"]), "image_std": list(self.pretrained_cfg["std"])}
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))


def _load(folder, num_classes: int, config_kw: dict) -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    folder = _no_hub("pretrained", folder)
    if not folder.is_dir():
        raise WeightLoadError(f"pretrained={str(folder)!r} must be a folder written by save_pretrained()")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise WeightLoadError(f"{folder} holds no readable config.json; is it a save_pretrained() folder? ({e})") from e
    if model_type != "segformer":
        raise WeightLoadError(f"{folder} holds a {model_type!r} model, not a SegFormer")
    try:
        cfg = SegformerConfig.from_pretrained(str(folder), local_files_only=True, **config_kw)
        if cfg.num_labels != num_classes:  # fresh label names rather than a stale id2label
            cfg.id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
            cfg.label2id = {v: k for k, v in cfg.id2label.items()}
        model, info = SegformerForSemanticSegmentation.from_pretrained(
            str(folder), config=cfg, local_files_only=True, output_loading_info=True, dtype=torch.float32,
            ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise WeightLoadError(f"could not load a SegFormer from {folder}: {e}") from e
    # new by design: the decode head (absent, or another class count); anything else is a wrong folder
    missing = [k for k in sorted(info.get("missing_keys", ())) if not k.startswith("decode_head.")]
    mismatched = [str(k) for k in info.get("mismatched_keys", ()) if "decode_head.classifier" not in str(k)]
    if missing or mismatched:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise WeightLoadError(f"weights in {folder} do not fit a SegFormer: " + "; ".join(parts))
    return model


def segformer(num_classes: int, in_chans: int = 3, pretrained: str | Path | None = None, variant: str = "b0",
              drop_rate: float | None = None, **config_kw) -> SegFormer:
    """SegFormer-``variant`` (b0: 3.7M parameters) for ``num_classes`` classes.

    ``pretrained``: a local ``save_pretrained`` folder (its config sets the size; ``variant`` is then
    ignored); ``None``/``False`` builds a random model from a ``SegformerConfig``.  An RGB checkpoint
    with ``in_chans != 3`` gets its first patch embedding adapted (``adapt_first_conv``).
    ``drop_rate`` sets the decode head's dropout (``classifier_dropout_prob``, 0.1 when None);
    ``config_kw`` are further ``SegformerConfig`` fields (e.g. ``drop_path_rate=0.1``).
    """
    if drop_rate is not None:
        config_kw["classifier_dropout_prob"] = drop_rate
    if pretrained is True:
        raise WeightLoadError("segformer: pretrained must be a local folder written by save_pretrained(); "
                              "there are no embedded SegFormer weights and no hub downloads")
    if pretrained:
        model = _load(pretrained, num_classes, config_kw)
        _adapt_in_chans(model.segformer, in_chans)
        pre = _read_preprocessor(pretrained)
        mean, std = pre.get("image_mean") or IMAGENET_MEAN, pre.get("image_std") or IMAGENET_STD
        return SegFormer(model, mean, std, weights=str(pretrained))
    if variant not in SEGFORMER_VARIANTS:
        raise ValueError(f"segformer: unknown variant {variant!r}; choose one of {sorted(SEGFORMER_VARIANTS)}")
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    cfg = SegformerConfig(**{**SEGFORMER_VARIANTS[variant], "num_labels": num_classes, "num_channels": in_chans,
                             **config_kw})
    return SegFormer(SegformerForSemanticSegmentation(cfg))
