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

Multi-scale features (``feature_info`` / ``forward_intermediates``, see ``_base.py``):
  - plain token ViTs (``model_type`` vit, deit, dinov2, dinov2_with_registers): the patch tokens
    after 4 evenly spaced blocks (all blocks when fewer; ViT-S/14's 12: blocks 2, 5, 8, 11), each
    through the model's final LayerNorm (as ``Dinov2Backbone`` and DPT read them) and reshaped to
    ``[B, hidden_size, H/p, W/p]``; reduction = patch size.  The blocks are run one by one and the
    walk stops after the deepest requested one; the deepest level is the patch part of
    ``last_hidden_state``.  CLS, distillation, register and visual-prompt tokens are dropped.
  - any other model whose ``hidden_states`` (or Swin's ``reshaped_hidden_states``) are maps
    ``[B, C, h, w]`` (ConvNeXt, ResNet, Swin, ...): the last hidden state at each stride, measured
    with one dummy forward at build time; ``forward_intermediates`` then runs the whole model
    (``output_hidden_states=True``), as transformers offers no way to stop early.
  - others (BEiT, CLIP vision, ...): ``feature_info`` is empty and ``forward_intermediates``
    raises ``NotImplementedError``.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from ._base import (
    BackboneMixin,
    ClassifierHead,
    FeatureMixin,
    NEUTRAL_MEAN,
    adapt_first_conv,
    resolve_feature_indices,
    set_pixel_norm,
)
from .registry import register_model
from .weights import WeightLoadError

_POOLS = ("auto", "pooler", "cls", "mean")
_NEUTRAL = NEUTRAL_MEAN
# transformers models whose forward is embeddings -> blocks -> final LayerNorm over the tokens
# [CLS (+ distillation / register tokens), patches], blocks called as block(hidden_states): these
# can be walked block by block for forward_intermediates (others, e.g. BEiT's relative position
# bias or ViT-MAE's random masking, need more than that).
_TOKEN_VITS = ("vit", "deit", "dinov2", "dinov2_with_registers")
_FEATURE_LEVELS = 4  # ViT pyramid: this many evenly spaced blocks


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


def _token_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(path, blocks) of a plain token ViT (``_TOKEN_VITS``): ``layers`` in transformers 5's ViT,
    ``encoder.layer`` in DINOv2 and transformers 4; None for any other model."""
    cfg = backbone.config
    if getattr(cfg, "model_type", None) not in _TOKEN_VITS or not hasattr(backbone, "embeddings"):
        return None
    for path in ("layers", "encoder.layer", "encoder.layers"):
        try:
            blocks = backbone.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) == cfg.num_hidden_layers:
            return path, blocks
    return None


def _patch_size(cfg) -> int:
    p = cfg.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


class HFVisionModel(BackboneMixin, FeatureMixin, nn.Module):
    """A ``transformers`` base model + ``ClassifierHead``.

    ``forward_features``: [0, 1] pixels [B, C, H, W] -> [B, num_features] (pooled, see the module
    docstring); ``pixel_norm`` (the ``mean``/``std`` of ``pretrained_cfg``: the folder's preprocessor
    config, else 0.5) normalises them before ``backbone(pixel_values=...)``.
    ``num_features`` is measured with one dummy forward at build time, so it is right for every
    architecture (``hidden_size``, ``hidden_sizes[-1]``, MobileViT's ``neck_hidden_sizes[-1]``, ...).

    ``feature_info`` / ``forward_intermediates``: see the module docstring (ViT-S/14: 4 levels of
    384 channels at reduction 14, ``backbone.encoder.layer.{2,5,8,11}``).
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
        set_pixel_norm(self, in_chans)
        self.num_features = self._probe_width(in_chans, size)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self._hidden_state_index: list[int] = []  # hidden_states entry of each level (non-ViT models)
        self.feature_info = self._vit_feature_info() if _token_blocks(backbone) else self._probe_pyramid(in_chans, size)

    @torch.no_grad()
    def _probe_width(self, in_chans: int, size) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        p = next(self.backbone.parameters())
        width = self.forward_features(torch.zeros(1, in_chans, *size, dtype=p.dtype, device=p.device)).shape[-1]
        self.backbone.train(was_training)
        return int(width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=self.pixel_norm(x))
        pooled = getattr(out, "pooler_output", None)
        if self.pool in ("auto", "pooler") and pooled is not None:
            return pooled.flatten(1)  # ResNet's pooler is [B, C, 1, 1]
        if self.pool == "pooler":
            raise ValueError(f"{type(self.backbone).__name__} returns no pooler_output; use pool='cls' or 'mean'")
        h = out.last_hidden_state
        if h.dim() == 4:  # conv feature map [B, C, h, w]
            return h.mean((2, 3))
        return h.mean(1) if self.pool == "mean" else h[:, 0]  # tokens [B, T, D]

    # -- multi-scale features ---------------------------------------------------------------------

    def _vit_feature_info(self) -> list[dict]:
        cfg = self.backbone.config
        path, blocks = _token_blocks(self.backbone)
        depth, n = len(blocks), min(_FEATURE_LEVELS, len(blocks))
        picks = [math.ceil((i + 1) * depth / n) - 1 for i in range(n)]  # evenly spaced, ending at the last
        return [{"num_chs": int(cfg.hidden_size), "reduction": _patch_size(cfg), "module": f"backbone.{path}.{i}"}
                for i in picks]

    @torch.no_grad()
    def _probe_pyramid(self, in_chans: int, size) -> list[dict]:
        """Levels of a model whose hidden states are maps: one dummy forward (eval mode, so BatchNorm
        statistics and the random state are untouched)."""
        was_training = self.backbone.training
        self.backbone.eval()
        p = next(self.backbone.parameters())
        try:
            maps = self._hidden_maps(torch.zeros(1, in_chans, *size, dtype=p.dtype, device=p.device))
        except Exception:  # noqa: BLE001 - a model that rejects output_hidden_states: no pyramid, still a classifier
            maps = []
        finally:
            self.backbone.train(was_training)
        if not maps:
            return []
        names = self._hidden_state_modules(len(maps))
        info: list[dict] = []
        self._hidden_state_index = []
        for i, (name, m) in enumerate(zip(names, maps)):
            level = {"num_chs": int(m.shape[1]), "reduction": max(1, round(size[0] / m.shape[-2])), "module": name}
            if info and info[-1]["reduction"] == level["reduction"]:  # the last map at each stride
                info[-1], self._hidden_state_index[-1] = level, i
            else:
                info.append(level)
                self._hidden_state_index.append(i)
        return info

    def _hidden_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The model's hidden states as maps [B, C, h, w] (empty when they are tokens)."""
        out = self.backbone(pixel_values=x, output_hidden_states=True)
        hs = getattr(out, "reshaped_hidden_states", None) or getattr(out, "hidden_states", None)
        if not hs or any(h.dim() != 4 for h in hs):
            return []
        return list(hs)

    def _hidden_state_modules(self, n: int) -> list[str]:
        """Module paths for ``hidden_states[0..n-1]``: the embedding (stem) module, then the stages
        of the first ``ModuleList`` of ``n - 1`` entries (``encoder.stages``, ``encoder.layers``)."""
        bb = self.backbone
        stem = next((a for a in ("embeddings", "embedder") if hasattr(bb, a)), "embeddings")
        stages = next((name for name, m in bb.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n - 1),
                      None)
        if stages is None:
            return [f"backbone.{stem}"] + [f"backbone.hidden_states.{i}" for i in range(1, n)]
        return [f"backbone.{stem}"] + [f"backbone.{stages}.{i}" for i in range(n - 1)]

    def _feature_steps(self):
        bb = self.backbone
        path, blocks = _token_blocks(bb)
        proj = getattr(getattr(bb.embeddings, "patch_embeddings", None), "projection", None)
        dtype = getattr(proj, "weight", None)
        dtype = dtype.dtype if isinstance(dtype, torch.Tensor) else None

        def embed(x):  # as ViTModel.forward: input cast to the patch projection's dtype
            return bb.embeddings(x if dtype is None else x.to(dtype))

        def block_fn(block):
            def run(h):
                out = block(h)
                return out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
            return run

        return [("backbone.embeddings", embed)] + [(f"backbone.{path}.{i}", block_fn(b)) for i, b in enumerate(blocks)]

    def _feature_readout(self, h: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Tokens [B, T, D] -> final LayerNorm -> patch tokens as a map [B, D, H/p, W/p]."""
        norm = getattr(self.backbone, "layernorm", None)
        if norm is not None:
            h = norm(h)
        p = _patch_size(self.backbone.config)
        gh, gw = input_size[0] // p, input_size[1] // p
        return h[:, h.shape[1] - gh * gw:].transpose(1, 2).reshape(h.shape[0], h.shape[2], gh, gw).contiguous()

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """``x`` [0, 1] pixels [B, C, H, W] -> level maps ``[B, C_i, H/s_i, W/s_i]`` for ``indices`` (see
        ``_base.py``)."""
        if not self.feature_info:
            raise NotImplementedError(
                f"{type(self.backbone).__name__} ({self.backbone.config.model_type}) gives no feature maps: "
                f"multi-scale features need a plain token ViT ({', '.join(_TOKEN_VITS)}) or a model whose "
                "hidden_states are [B, C, h, w] maps (ConvNeXt, ResNet, Swin, ...)")
        if _token_blocks(self.backbone):
            return super().forward_intermediates(x, indices)  # normalises x first
        take = resolve_feature_indices(indices, len(self.feature_info))
        maps = self._hidden_maps(self.pixel_norm(x)) if take else []
        return [maps[self._hidden_state_index[i]] for i in take]


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
