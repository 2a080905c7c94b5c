"""Any Hugging Face ``transformers`` vision model as a visionsmith backbone.

The backbone is the base model without a task head (``AutoModel``: ``ViTModel``, ``ConvNextModel``,
``ResNetModel``, ``Dinov2Model``, ...), kept as ``self.backbone`` so its submodule names
(``backbone.layers.0.attention...``) are the LoRA targets and checkpoint keys; the classifier is a
visionsmith ``ClassifierHead`` (``head.fc``), always freshly initialised.

Sources, never a model hub (nothing here may resolve a repo id):
  - ``pretrained``: a local folder written by ``save_pretrained`` (read with
    ``local_files_only=True``); a checkpoint saved from a ``...ForImageClassification`` model loads
    too: its classifier is ignored.
  - ``config``: a dict with ``model_type`` (``{"model_type": "vit", "image_size": 32, ...}``), a local
    folder / ``config.json``, or a ``PretrainedConfig``; with ``pretrained`` it overrides the saved
    config (e.g. ``{"hidden_dropout_prob": 0.1}``).

``forward_features`` returns the pooled features [B, num_features]: ``pooler_output`` when the
model has a pooler (ConvNeXt, ResNet, Swin, DINOv2, CLIP vision, BEiT), else the CLS token of
``last_hidden_state`` [B, T, D] (ViT without pooler) or the spatial mean of a [B, C, h, w] map.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn

from ._base import BackboneMixin, ClassifierHead, adapt_first_conv
from .registry import register_model
from .weights import WeightLoadError

_POOLS = ("auto", "pooler", "cls", "mean")
_NEUTRAL = (0.5, 0.5, 0.5)


def _no_hub(what: str, value) -> Path:
    """A local path, or an error: a string that is not on disk would be a hub id to transformers."""
    p = Path(value)
    if not p.exists():
        raise WeightLoadError(f"{what}={str(value)!r} is not a local file or folder; visionsmith never downloads "
                              "from a model hub: save the model with save_pretrained() and pass that folder")
    return p


def _make_config(config):
    """dict (with ``model_type``) | local folder / config.json | PretrainedConfig -> a fresh PretrainedConfig."""
    from transformers import AutoConfig, PretrainedConfig
    if isinstance(config, PretrainedConfig):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        kw = dict(config)
        model_type = kw.pop("model_type", None)
        if not model_type:
            raise ValueError("an hf_vision config dict needs a 'model_type' (e.g. 'vit', 'convnext', 'swin')")
        try:
            return AutoConfig.for_model(model_type, **kw)
        except ValueError as e:
            raise ValueError(f"hf_vision config: {e}") from e
    if isinstance(config, (str, Path)):
        return AutoConfig.from_pretrained(str(_no_hub("config", config)), local_files_only=True)
    raise TypeError(f"hf_vision config must be a dict, a local path or a PretrainedConfig, not {type(config).__name__}")


def _load_backbone(folder, config, in_chans: int, model_kwargs: dict) -> nn.Module:
    """``AutoModel.from_pretrained`` on a local folder, strictly: every weight of the base model
    must be in the folder, except a pooler (absent when saved from a ``...ForImageClassification``),
    which is then dropped so features come from the trained CLS token rather than a random layer."""
    from transformers import AutoModel
    folder = _no_hub("pretrained", folder)
    if not folder.is_dir():
        raise WeightLoadError(f"pretrained={str(folder)!r} must be a folder written by save_pretrained()")
    kw = dict(model_kwargs)
    if isinstance(config, dict):  # overrides on top of the saved config
        kw.update({k: v for k, v in config.items() if k != "model_type"})
    elif config is not None:
        kw["config"] = _make_config(config)
    try:
        backbone, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                   dtype=torch.float32, **kw)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightLoadError(f"could not load a transformers model from {folder}: {e}") from e
    missing = sorted(info.get("missing_keys", ()))
    bad = [k for k in missing if not k.startswith("pooler.")]
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if bad or mismatched:
        parts = [f"{len(bad)} missing (e.g. {', '.join(bad[:3])})"] if bad else []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise WeightLoadError(f"weights in {folder} do not fit {type(backbone).__name__}: " + "; ".join(parts))
    if missing and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    _adapt_in_chans(backbone, in_chans)
    return backbone


def _adapt_in_chans(backbone: nn.Module, in_chans: int) -> None:
    """Pretrained RGB patch/stem conv -> ``in_chans`` inputs (sum for gray, see ``adapt_first_conv``).

    The first ``Conv2d`` reading the image is the patch embedding (ViT) or stem (ConvNeXt, ResNet);
    modules that check the channel count keep it in a ``num_channels`` attribute, updated too."""
    old = backbone.config.num_channels
    if old == in_chans:
        return
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.in_channels == old), None)
    if conv is None:
        raise WeightLoadError(f"cannot adapt {type(backbone).__name__} from {old} to {in_chans} input channels: "
                              "no input convolution found")
    conv.weight = nn.Parameter(adapt_first_conv(conv.weight.detach(), in_chans))
    conv.in_channels = in_chans
    for m in backbone.modules():
        if getattr(m, "num_channels", None) == old:
            m.num_channels = in_chans
    backbone.config.num_channels = in_chans


def _read_preprocessor(folder) -> dict:
    f = Path(folder) / "preprocessor_config.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


class HFVisionModel(BackboneMixin, nn.Module):
    """A ``transformers`` base model + ``ClassifierHead``.

    ``forward_features``: [B, C, H, W] -> [B, num_features] (pooled, see the module docstring).
    ``num_features`` is measured with one dummy forward at build time, so it is right for every
    architecture (``hidden_size``, ``hidden_sizes[-1]``, MobileViT's ``neck_hidden_sizes[-1]``, ...).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 1000, drop_rate: float = 0.0, pool: str = "auto",
                 mean=_NEUTRAL, std=_NEUTRAL):
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.backbone = backbone
        self.pool = pool
        self.num_classes = num_classes
        size = getattr(backbone.config, "image_size", 224)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        in_chans = backbone.config.num_channels
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std), "input_size": (in_chans, *size)}
        self.num_features = self._probe_width(in_chans, size)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)

    @torch.no_grad()
    def _probe_width(self, in_chans: int, size) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        p = next(self.backbone.parameters())
        width = self.forward_features(torch.zeros(1, in_chans, *size, dtype=p.dtype, device=p.device)).shape[-1]
        self.backbone.train(was_training)
        return int(width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if self.pool in ("auto", "pooler") and pooled is not None:
            return pooled.flatten(1)  # ResNet's pooler is [B, C, 1, 1]
        if self.pool == "pooler":
            raise ValueError(f"{type(self.backbone).__name__} returns no pooler_output; use pool='cls' or 'mean'")
        h = out.last_hidden_state
        if h.dim() == 4:  # conv feature map [B, C, h, w]
            return h.mean((2, 3))
        return h.mean(1) if self.pool == "mean" else h[:, 0]  # tokens [B, T, D]


@register_model()
def hf_vision(num_classes: int = 1000, pretrained: bool | str = False, config=None, in_chans: int = 3,
              drop_rate: float = 0.0, pool: str = "auto", mean=None, std=None, **model_kwargs) -> HFVisionModel:
    """Any ``transformers`` vision model: ``pretrained='<save_pretrained folder>'`` or ``config={...}``.

    ``mean``/``std`` default to the folder's ``preprocessor_config.json``, else (0.5, 0.5, 0.5).
    ``model_kwargs`` go to the model constructor (e.g. ``add_pooling_layer=False`` for ViT).
    """
    if pretrained is True:
        raise WeightLoadError("hf_vision: pretrained must be a local folder written by save_pretrained(); "
                              "there are no embedded transformers weights and no hub downloads")
    if pretrained:
        backbone = _load_backbone(pretrained, config, in_chans, model_kwargs)
        pre = _read_preprocessor(pretrained)
    elif config is not None:
        from transformers import AutoModel
        cfg = _make_config(config)
        cfg.num_channels = in_chans
        backbone = AutoModel.from_config(cfg, **model_kwargs)
        pre = {}
    else:
        raise ValueError("hf_vision needs pretrained='<local save_pretrained folder>' or config={'model_type': ...}")
    mean = mean or pre.get("image_mean") or _NEUTRAL
    std = std or pre.get("image_std") or _NEUTRAL
    return HFVisionModel(backbone, num_classes, drop_rate, pool, mean, std)


@register_model()
def vit_tiny(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 3, drop_rate: float = 0.0,
             img_size: int = 32, patch_size: int = 4, depth: int = 6, embed_dim: int = 192,
             num_heads: int = 3) -> HFVisionModel:
    """Tiny ViT for 32 px inputs (patch 4, 6 layers x 192, 3 heads; 2.7M params), a transformers ViTModel.

    ViT: Dosovitskiy et al., 2021, arXiv:2010.11929.  32 px / patch 4 -> 64 tokens + CLS.  The head
    reads the final-LayerNorm CLS token (no tanh pooler), as ``ViTForImageClassification`` does.
    ``pretrained`` may be a local ``save_pretrained`` folder of a ViT with the same shape."""
    config = {"model_type": "vit", "image_size": img_size, "patch_size": patch_size, "hidden_size": embed_dim,
              "num_hidden_layers": depth, "num_attention_heads": num_heads, "intermediate_size": 4 * embed_dim,
              "qkv_bias": True}
    return hf_vision(num_classes, pretrained, config if not pretrained else None, in_chans, drop_rate,
                     pool="cls", add_pooling_layer=False)
