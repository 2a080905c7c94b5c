"""Masked image modelling: SimMIM (Xie et al., 2022, "SimMIM: A Simple Framework for Masked Image
Modeling", arXiv:2111.09886).

Random squares of ``ssl.mask_patch`` pixels (``ssl.mask_ratio`` of them, exactly, per image) are
replaced by a learned fill value; the backbone encodes the whole masked image; a one-layer decoder
(1x1 conv to ``stride**2 * C`` channels + pixel shuffle) predicts every pixel from the feature
map; the loss is the L1 distance on the masked pixels only, in the model's normalised units (the
batch's [0, 1] pixels through ``model.pixel_norm``, the model's own mean/std).

Why SimMIM and not MAE (He et al. 2022; transformers' ``ViTMAEModel``): MAE's encoder drops the
masked tokens, which only a ViT can do, and ``ViTMAEModel`` is its own architecture (fixed sin-cos
position embeddings, its own key names) whose weights do not load into the ``vit_tiny`` any recipe
builds.  SimMIM keeps the full input, so one code path serves every backbone with a spatial output:
a CNN's feature map ``[B, C, h, w]`` or a ViT's patch tokens reshaped to ``[B, D, h, w]``; the
backbone keeps its own keys, so ``model.pretrained=<this run>`` loads it into any recipe, and the
paper shows the one-layer decoder does as well as deeper ones.  The fill value lives in pixel
space (``mask_token``, [1, C, 1, 1], in normalised units: 0 is the mean colour; it is turned into
pixels with ``pixel_norm.inverse`` and normalised back by the model): a CNN sees it directly, and for
a ViT whose patch equals ``mask_patch`` every masked patch embeds to the same learned vector, i.e. a
mask token.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import SSLConfig
from ..errors import UserError
from .registry import register_method
from .ssl import SSLMethod


def random_patch_mask(batch: int, grid: int, ratio: float) -> torch.Tensor:
    """bool [batch, grid, grid]: exactly ``round(ratio * grid**2)`` True cells per image, drawn from
    the global CPU generator (the loop re-seeds it every step: resume-exact)."""
    n = grid * grid
    k = min(n - 1, max(1, round(ratio * n)))
    idx = torch.rand(batch, n).argsort(dim=1)[:, :k]
    return torch.zeros(batch, n, dtype=torch.bool).scatter_(1, idx, True).view(batch, grid, grid)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels only (SimMIM's loss).

    pred, target: [B, C, H, W]; mask: bool [B, 1, H, W] (True = hidden from the encoder)."""
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1.0)


class MaskedImageModeling(SSLMethod):
    """``forward({'image': [B,C,S,S], ...}) -> {'loss': [], 'output': [B,C,S,S] reconstruction}``.

    ``mask_token`` [1, C, 1, 1] and ``decoder`` belong to the method.  The model's head is frozen:
    SimMIM reads the feature map under it (so ``simple_cnn``'s dense layer in its head is not
    pretrained; prefer a backbone whose features are its last conv stage, e.g. ``resnet8``).
    """

    def __init__(self, model: nn.Module, cfg: SSLConfig, in_chans: int, image_size: int, task=None):
        head = getattr(model, "head", None)
        super().__init__(model, cfg, frozen=head if isinstance(head, nn.Module) else model.get_classifier(), task=task)
        s, p = image_size, cfg.mask_patch
        if s % p:
            raise UserError(f"method=mim: data.image_size={s} is not a multiple of ssl.mask_patch={p}")
        self.tokens = self._is_token_model(model, in_chans, s)
        with torch.no_grad():
            was = model.training
            model.eval()
            fmap = self.feature_map(torch.zeros(1, in_chans, s, s, dtype=next(model.parameters()).dtype))
            model.train(was)
        c, h, w = fmap.shape[1:]
        if h != w or s % h:
            raise UserError(f"method=mim: the {h}x{w} feature map of {type(model).__name__} does not tile the "
                             f"{s}x{s} input; choose data.image_size as a multiple of the model's stride")
        self.grid, self.patch, self.stride, self.in_chans = s // p, p, s // h, in_chans
        self.mask_token = nn.Parameter(torch.zeros(1, in_chans, 1, 1))
        self.decoder = nn.Sequential(nn.Conv2d(c, self.stride ** 2 * in_chans, 1), nn.PixelShuffle(self.stride))

    @staticmethod
    @torch.no_grad()
    def _is_token_model(model: nn.Module, in_chans: int, s: int) -> bool:
        """True for a transformers ViT-style backbone (patch tokens); False for a CNN feature map."""
        was = model.training
        model.eval()
        f = model.forward_features(torch.zeros(1, in_chans, s, s, dtype=next(model.parameters()).dtype))
        model.train(was)
        if f.dim() == 4:
            return False
        if hasattr(getattr(model, "backbone", None), "embeddings"):
            return True
        raise UserError(f"method=mim needs a spatial feature map (a CNN) or a ViT's patch tokens; "
                         f"{type(model).__name__}.forward_features returns pooled features only")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels [B, C, S, S] -> [B, D, h, w]: the CNN's map, or the ViT's patch tokens (CLS
        dropped) as a grid."""
        if not self.tokens:
            return self.model.forward_features(x)
        t = self.model.backbone(pixel_values=self.model.pixel_norm(x)).last_hidden_state  # [B, 1 + h*w, D]
        side = int(round((t.shape[1] - 1) ** 0.5))
        if side * side != t.shape[1] - 1:
            raise UserError(f"method=mim: {t.shape[1]} tokens are not a CLS token + a square grid")
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)

    def pixel_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        """bool [B, 1, S, S]: a fresh random patch mask, expanded to pixels."""
        m = random_patch_mask(batch, self.grid, self.cfg.mask_ratio)
        m = m.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)
        return m.unsqueeze(1).to(device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # [0, 1] pixels
        norm = self.model.pixel_norm
        m = self.pixel_mask(x.shape[0], x.device)
        x_in = torch.where(m, norm.inverse(self.mask_token).to(x.dtype), x)
        if x.is_contiguous(memory_format=torch.channels_last):
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        pred = self.decoder(self.feature_map(x_in)).float()  # [B, C, S, S], normalised units
        return {"loss": masked_l1(pred, norm(x).float(), m), "output": pred}


@register_method("mim", labels=False, trains_head=False)
def build(cfg, model, task, teacher=None):
    """SimMIM masked-image-modelling pretraining of the backbone."""
    return MaskedImageModeling(model, cfg.ssl, cfg.model.in_chans, cfg.data.image_size, task)
