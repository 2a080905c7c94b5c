"""One preprocessing path: ``predict`` and ``serve`` on PNG files of test images give exactly the
probabilities ``eval`` computes for the same images.

Fashion-MNIST is held at 28 px and the quickstart trains at 32: ``eval`` resizes the 28 px arrays
with torch (``BatchTransform``), so a 28 px PNG must reach the same resize, not a PIL resize to 32
first (that path disagreed on 3 top-1 answers in 1,000 here and on 12 in the 10k test images)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import visionsmith
from visionsmith.config import DataConfig
from visionsmith.data import decode_size
from visionsmith.engine.evaluate import run_and_split
from visionsmith.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
N = 300


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "fm"
    return visionsmith.train(REPO / "recipes" / "fashion-mnist-quick.yaml", out=out, report=False,
                             overrides=["train.max_steps=12", "train.threads=1", "data.train_limit=1000"])


@pytest.fixture(scope="module")
def eval_probs_and_pngs(fmnist_run, tmp_path_factory):
    """(softmax of what ``eval`` computes for the first N test images [N, K], their PNG folder, classes)."""
    cfg, model, classes, _, ds, eval_tf, device = run_and_split(fmnist_run, "test")
    assert cfg.data.image_size != ds.images.shape[-1]  # the case that matters: the run resizes
    sub = ds.subset(torch.arange(N))
    if cfg.train.channels_last:  # what evaluate_run does
        model = model.to(memory_format=torch.channels_last)
    m = get_task(cfg).evaluate(model, sub, eval_tf, cfg.train.eval_batch_size, device, cfg.train.channels_last,
                               keep_outputs=True)
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(N):
        Image.fromarray(sub.images[i, 0].numpy()).save(folder / f"{i:04d}.png")
    return m["outputs"].softmax(-1), folder, classes


def test_decode_size_is_the_size_the_run_holds_its_images_at():
    assert decode_size(DataConfig(name="fashion_mnist", image_size=32)) == 28
    assert decode_size(DataConfig(name="digits", image_size=16)) == 8
    assert decode_size(DataConfig(name="folder", image_size=64)) == 64
    assert decode_size(DataConfig(name="folder", image_size=64, cache_size=80)) == 80


@pytest.mark.parametrize("batch_size", [64, 7])
def test_predict_on_pngs_gives_exactly_evals_probabilities(fmnist_run, eval_probs_and_pngs, batch_size):
    """At predict's default batch size the answer is bit for bit eval's.  Any batch size decodes the
    same pixels; a batch of 7 changes only the last bits (oneDNN picks its convolution blocking by
    batch size), never an answer."""
    ref, folder, classes = eval_probs_and_pngs
    res = visionsmith.predict(fmnist_run, [folder], topk=len(classes), batch_size=batch_size)
    assert not res.bad and len(res.predictions) == N
    got = torch.zeros_like(ref)
    for p in res.predictions:
        i = int(Path(p.path).stem)
        for c, q in p.topk:
            got[i, classes.index(c)] = q
    if batch_size == 64:
        assert torch.equal(got, ref), f"max difference {(got - ref).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        assert torch.equal(got.argmax(1), ref.argmax(1))


def test_serve_decodes_pngs_to_exactly_evals_probabilities(fmnist_run, eval_probs_and_pngs):
    from visionsmith.serve.backends import TorchBackend
    ref, folder, _ = eval_probs_and_pngs
    backend = TorchBackend(fmnist_run, "fm")
    files = sorted(folder.glob("*.png"))
    pixels = torch.cat([backend.prepare(f.read_bytes(), f.name)[0] for f in files])  # [N, 1, 32, 32]
    got = torch.from_numpy(backend.run(pixels)).softmax(-1)
    assert torch.equal(got, ref), f"max difference {(got - ref).abs().max().item():.3g}"
