"""EMA: weights and BatchNorm statistics are averaged together."""
from __future__ import annotations

import torch

from visionsmith.engine.ema import ModelEMA
from visionsmith.models import create_model


def test_ema_averages_weights_and_bn_statistics():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=3)
    ema = ModelEMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():  # move the model: new weights and new BN statistics
        for p in model.parameters():
            p.add_(1.0)
        model.train()(torch.randn(8, 3, 16, 16) * 5 + 3)
    ema.update(model)
    d = min(0.5, 2 / 11)  # warm-up decay at the first update
    now, cur = ema.module.state_dict(), model.state_dict()
    for k in ("stem.0.weight", "stem.1.running_mean", "stem.1.running_var"):
        if k in now:
            assert torch.allclose(now[k], d * before[k] + (1 - d) * cur[k], atol=1e-6), k
    bn = [k for k in now if k.endswith("running_mean")]
    assert bn and all(torch.allclose(now[k], d * before[k] + (1 - d) * cur[k], atol=1e-6) for k in bn)
    counts = [k for k in now if k.endswith("num_batches_tracked")]
    assert all(torch.equal(now[k], cur[k]) for k in counts)
