"""Self-supervised pretraining: NT-Xent, SimCLR views, SimMIM masking, the kNN monitor, unlabelled
data, exact resume, DDP, loading the pretrained backbone into another recipe, and the report."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import visionsmith as vs
from visionsmith.config import ConfigError, SSLConfig, load_config
from visionsmith.data import DataError, build_datasets
from visionsmith.data.synthetic import make_image_folder
from visionsmith.engine.build import build_model, build_transforms
from visionsmith.engine.checkpoint import load_checkpoint
from visionsmith.methods.ssl import knn_votes
from visionsmith.methods.ssl_contrastive import ViewAugment, nt_xent
from visionsmith.methods.ssl_masked import MaskedImageModeling, masked_l1, random_patch_mask
from visionsmith.models import create_model
from visionsmith.models.weights import WeightLoadError

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"
# resnet8 on 16 px digits: a 4x4 feature map, so SimMIM's 4 px squares tile it.
SSL = ["model.name=resnet8", "model.in_chans=1", "model.drop_rate=0.0", "train.threads=1",
       "data.augment.scale=[1.0,1.0]", "data.augment.translate=0.0"]


# ---------------------------------------------------------------------------------------------
# NT-Xent


def _nt_xent_by_hand(z1, z2, t):
    """The SimCLR paper's eq. 1, written as loops over the 2n anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_matches_the_paper_formula_and_a_closed_form_case():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(_nt_xent_by_hand(z1, z2, 0.3), rel=1e-5)
    assert nt_xent(z1 * 4.0, z2, 0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-5)  # scale-free
    # Views identical, images orthogonal: every anchor has cos 1 to its positive and 0 to the 2n - 2 others.
    n, t = 4, 0.5
    e = torch.eye(n)
    assert nt_xent(e, e, t).item() == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / t)), rel=1e-6)
    # Swapping an image's views between the two halves changes nothing; breaking the pairs hurts.
    assert nt_xent(z2, z1, 0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-6)
    assert nt_xent(e, e.roll(1, 0), t) > nt_xent(e, e, t) + 1.0


def test_nt_xent_over_gathered_keys_is_the_global_batch_loss_split_by_rank():
    """What each DDP rank computes (its anchors against every rank's keys), averaged, is the loss of the
    global batch: the indexing of the positives and of the excluded self-similarity is right."""
    g = torch.Generator().manual_seed(1)
    world, n = 3, 4
    z1, z2 = torch.randn(world * n, 8, generator=g), torch.randn(world * n, 8, generator=g)
    per_rank = [nt_xent(z1[r * n:(r + 1) * n], z2[r * n:(r + 1) * n], 0.2, z1, z2, rank=r) for r in range(world)]
    assert torch.stack(per_rank).mean().item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-5)


def _gather_worker(rank, world, init_file, z1_all, z2_all, out):
    import torch.distributed as dist

    from visionsmith.methods.ssl_contrastive import _GatherWithGrad
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = z1_all.shape[0] // world
    z1 = z1_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    z2 = z2_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    k1, k2 = torch.cat(_GatherWithGrad.apply(z1)), torch.cat(_GatherWithGrad.apply(z2))
    nt_xent(z1, z2, 0.2, k1, k2, rank).backward()
    torch.save({"g1": z1.grad, "g2": z2.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gathered_negatives_give_the_global_batch_gradient(tmp_path):
    """Two gloo processes: each rank's gradient (all-reduced through the gather), divided by the world
    size as DDP's averaging does, equals the single-process gradient of the global-batch loss."""
    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(2)
    world, n = 2, 3
    z1, z2 = torch.randn(world * n, 5, generator=g), torch.randn(world * n, 5, generator=g)
    mp.spawn(_gather_worker, args=(world, tmp_path / "init", z1, z2, tmp_path / "grad"), nprocs=world)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    nt_xent(a1, a2, 0.2).backward()
    for r in range(world):
        got = torch.load(f"{tmp_path / 'grad'}.{r}")
        assert torch.allclose(got["g1"] / world, a1.grad[r * n:(r + 1) * n], atol=1e-6)
        assert torch.allclose(got["g2"] / world, a2.grad[r * n:(r + 1) * n], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# SimCLR views


@pytest.fixture(scope="module")
def digits_batch():
    """32 real 8x8 digits, [0, 1] pixels as the loop gives them to a method: [32, 1, 16, 16]."""
    cfg = load_config(DIGITS, SSL)
    ds = build_datasets(cfg.data, 0)["train"]
    _, eval_tf = build_transforms(cfg, create_model("resnet8", num_classes=10, in_chans=1))
    return eval_tf(ds.images[:32], None), eval_tf


def test_views_keep_the_shape_differ_from_each_other_and_repeat_with_the_seed(digits_batch):
    x, tf = digits_batch
    aug = ViewAugment(SSLConfig())
    torch.manual_seed(5)
    v1, v2 = aug(x), aug(x)
    torch.manual_seed(5)
    w1 = aug(x)
    assert v1.shape == x.shape and v1.dtype == x.dtype
    assert torch.equal(v1, w1)  # a function of the global generator: resume-exact
    assert (v1 - v2).abs().mean() > 0.025 and (v1 - x).abs().mean() > 0.025  # pixel units (0.1 normalised)
    assert float(v1.min()) >= 0 and float(v1.max()) <= 1  # still [0, 1] pixels: the model normalises them


def test_a_view_without_crop_flip_or_jitter_is_the_input(digits_batch):
    x, tf = digits_batch
    aug = ViewAugment(SSLConfig(crop_scale=(1.0, 1.0), hflip=False, jitter=0.0))
    assert torch.allclose(aug(x), x, atol=1e-5)


def test_a_flip_only_view_mirrors_some_images_exactly(digits_batch):
    x, tf = digits_batch
    torch.manual_seed(0)
    v = ViewAugment(SSLConfig(crop_scale=(1.0, 1.0), hflip=True, jitter=0.0))(x)
    same = [torch.allclose(v[i], x[i], atol=1e-5) for i in range(len(x))]
    mirrored = [torch.allclose(v[i], x[i].flip(-1), atol=1e-5) for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored)) and 5 < sum(mirrored) < 27


# ---------------------------------------------------------------------------------------------
# SimMIM


def test_patch_mask_hides_exactly_the_ratio_and_changes_per_image():
    torch.manual_seed(0)
    m = random_patch_mask(16, 8, 0.6)
    assert m.shape == (16, 8, 8) and (m.flatten(1).sum(1) == round(0.6 * 64)).all()
    assert len({tuple(r.flatten().tolist()) for r in m}) == 16


def test_masked_l1_counts_only_masked_pixels():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True  # the top half of every image
    wrong_where_visible = target + 10.0 * (~mask)
    assert masked_l1(wrong_where_visible, target, mask).item() == 0.0
    assert masked_l1(target + 0.5 * mask, target, mask).item() == pytest.approx(0.5)


def test_mim_feeds_the_backbone_the_masked_image_and_learns_its_fill(digits_batch):
    x, _ = digits_batch
    model = create_model("resnet8", num_classes=10, in_chans=1)
    mim = MaskedImageModeling(model, SSLConfig(mask_ratio=0.5, mask_patch=4), 1, 16)
    assert (mim.grid, mim.stride) == (4, 4)
    seen = []
    model.conv1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    torch.manual_seed(3)
    out = mim({"image": x, "label": torch.zeros(len(x), dtype=torch.long)})
    torch.manual_seed(3)
    m = mim.pixel_mask(len(x), x.device)
    assert (m.flatten(1).float().mean(1) == 0.5).all()
    fed, norm = seen[0], model.pixel_norm  # the network's input: after the model's own normalisation
    x_norm = (x - norm.mean) / norm.std
    assert torch.equal(fed[~m.expand_as(fed)], x_norm[~m.expand_as(x)])  # visible pixels untouched
    masked = fed[m.expand_as(fed)]  # the fill value, kept in normalised units (pixels and back)
    assert torch.allclose(masked, torch.full_like(masked, mim.mask_token.item()), atol=1e-6)
    assert out["output"].shape == x.shape
    assert out["loss"].item() == pytest.approx(masked_l1(out["output"], x_norm, m).item(), rel=1e-6)
    out["loss"].backward()
    assert mim.mask_token.grad is not None and mim.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.head.parameters())  # the head is frozen, not trained


def test_mim_works_on_vit_patch_tokens():
    model = create_model("vit_tiny", num_classes=10, depth=1)
    mim = MaskedImageModeling(model, SSLConfig(mask_patch=4), 3, 32)
    assert mim.tokens and (mim.grid, mim.stride) == (8, 4)
    out = mim({"image": torch.randn(2, 3, 32, 32)})
    out["loss"].backward()
    assert out["output"].shape == (2, 3, 32, 32)
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad is not None


def test_mim_refuses_an_image_size_its_masks_cannot_tile():
    with pytest.raises(ValueError, match="data.image_size=18 is not a multiple of ssl.mask_patch=4"):
        MaskedImageModeling(create_model("resnet8", num_classes=10, in_chans=1), SSLConfig(), 1, 18)


# ---------------------------------------------------------------------------------------------
# kNN monitor


def test_knn_votes_weigh_neighbours_by_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    v = knn_votes(bank, labels, torch.tensor([[1.0, 0.0]]), 2, k=2, temperature=0.5)
    w0, w1 = math.exp(1.0 / 0.5), math.exp(0.8 / 0.5)  # the two nearest: cos 1 (class 0) and 0.8 (class 1)
    assert v[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-6)


def test_knn_separates_separable_features_and_is_at_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    lab = torch.arange(4).repeat_interleave(50)
    feats = centres[lab] + torch.randn(200, 16, generator=g)
    q_lab = torch.arange(4).repeat_interleave(25)
    queries = centres[q_lab] + torch.randn(100, 16, generator=g)
    assert (knn_votes(feats, lab, queries, 4).argmax(1) == q_lab).float().mean() == 1.0
    noise = torch.randn(100, 16, generator=g)
    acc = (knn_votes(torch.randn(200, 16, generator=g), lab, noise, 4).argmax(1) == q_lab).float().mean()
    assert acc < 0.45


# ---------------------------------------------------------------------------------------------
# Runs: exact resume, monitor rows, unlabelled data, bad input


@pytest.mark.parametrize("method,extra", [("simclr", {"projector.0.weight", "projector.1.running_mean"}),
                                          ("mim", {"mask_token", "decoder.0.weight"})])
def test_ssl_run_resumes_bit_exact_with_its_own_parts(method, extra, resumes_exactly):
    cfg = load_config(DIGITS, SSL + [f"method={method}", "train.epochs=2", "train.checkpoint_every=7"])
    full, part, wa, state = resumes_exactly(cfg)
    assert extra <= set(state["method"])
    rows = lambda run: [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    val = [r for r in rows(full) if r["split"] == "val"]
    assert len(val) == 2 and all(r["monitor"] == "knn" and 0.1 < r["acc"] <= 1 for r in val)
    assert val == [r for r in rows(part) if r["split"] == "val"]
    torch.manual_seed(cfg.seed)  # the loop's head init
    assert torch.equal(wa["head.fc.weight"], build_model(cfg, 10).head.fc.weight)  # frozen: never trained


def test_unlabelled_folder_pretrains_without_val_or_monitor(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=12, size=16)  # class folders are ignored
    (root / "circle" / "deeper").mkdir()
    (root / "circle" / "0000.png").rename(root / "circle" / "deeper" / "0000.png")
    (root / "square" / "0000.png").rename(root / "loose.png")
    (root / "notes.txt").write_text("not an image")
    run = vs.train(DIGITS, SSL + ["method=simclr", "data.name=folder", f"data.root={root}", "data.labels=false",
                                  "train.batch_size=16", "train.epochs=1"], out=tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == ["unlabelled"] and info["data"]["train"] == 36
    assert info["data"]["val"] == info["data"]["test"] == 0 and info["status"] == "done"
    assert any(p.endswith("notes.txt") for p, _ in info["data"]["skipped"])
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["split"] == "train" for r in rows)
    assert (run / "checkpoints" / "best.safetensors").is_file() and not (run / "eval.json").exists()
    assert (run / "report.html").is_file()


def test_labels_false_drops_the_labels_of_a_labelled_source_and_holds_nothing_out():
    cfg = load_config(DIGITS, ["method=simclr", "data.labels=false"]).data
    data = build_datasets(cfg, 0)
    assert len(data["train"]) == 1797 and data["train"].classes == ["unlabelled"]
    assert (data["train"].labels == 0).all() and len(data["val"]) == len(data["test"]) == 0
    cfg.train_limit = 500
    assert len(build_datasets(cfg, 0)["train"]) == 500


@pytest.mark.parametrize("labels", [False, True])
def test_a_folder_without_images_is_an_error_before_training(tmp_path, labels):
    root = tmp_path / "empty"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "cats" / "README.txt").write_text("no images here")
    over = SSL + ["method=simclr", "data.name=folder", f"data.root={root}", f"data.labels={str(labels).lower()}"]
    with pytest.raises(DataError, match=f"no image files in {root}"):
        vs.train(DIGITS, over, out=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "run.json").exists()


def test_unlabelled_data_needs_a_self_supervised_method_and_ssl_is_not_a_probe():
    with pytest.raises(ConfigError, match="data.labels=false .* needs a self-supervised method"):
        load_config(DIGITS, ["data.labels=false"])
    with pytest.raises(ConfigError, match="adapt.mode=linear freezes"):
        load_config(DIGITS, ["method=simclr", "adapt.mode=linear"])


# ---------------------------------------------------------------------------------------------
# The pretrained backbone as a starting point; the report


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """A finished SimCLR run on digits (resnet8, one channel), with its test evaluation and report."""
    return vs.train(DIGITS, SSL + ["method=simclr", "train.epochs=2"], out=tmp_path_factory.mktemp("ssl") / "run")


def test_an_ssl_run_is_scored_by_knn_and_its_report_says_so(ssl_run, capsys):
    ev = json.loads((ssl_run / "eval.json").read_text())
    assert ev["monitor"] == "knn" and ev["n"] == 359 and 0.5 < ev["acc"] <= 1  # digits: far above chance
    assert json.loads((ssl_run / "run.json").read_text())["test"]["monitor"] == "knn"
    page = (ssl_run / "report.html").read_text()
    assert "kNN test accuracy" in page and "kNN acc</th>" in page and "could not be drawn" not in page
    assert "model.pretrained=&lt;this run folder&gt;" in page
    assert "pretrained without labels" in (ssl_run / "model_card.md").read_text()
    with pytest.raises(ValueError, match="its classifier was never trained"):
        vs.predict(ssl_run, [REPO / "README.md"])
    from visionsmith.cli import main
    from visionsmith.workflows.compare import row_of
    assert row_of("ssl", ssl_run)["mode"] == "simclr (kNN acc)"  # a comparison table says what the number is
    main(["eval", str(ssl_run)])
    assert "test: kNN accuracy" in capsys.readouterr().out


def test_model_pretrained_run_folder_loads_the_backbone_and_keeps_a_new_head(ssl_run):
    from safetensors.torch import load_file
    saved = load_file(str(ssl_run / "checkpoints" / "best.safetensors"))
    torch.manual_seed(0)
    m = create_model("resnet8", num_classes=4, in_chans=1, pretrained=str(ssl_run))
    own = m.state_dict()
    assert own["head.fc.weight"].shape == (4, 64)
    assert all(torch.equal(own[k], saved[k]) for k in own if not k.startswith("head.fc."))
    # A linear probe from it: the backbone stays exactly the pretrained one.
    probe = vs.train(DIGITS, SSL + ["adapt.mode=linear", f"model.pretrained={ssl_run}", "train.max_steps=5"],
                     out=ssl_run.parent / "probe", report=False)
    after = load_file(str(probe / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(after[k], saved[k]) for k in saved if not k.startswith("head.fc."))
    assert not torch.equal(after["head.fc.weight"], saved["head.fc.weight"])


def test_model_pretrained_run_folder_of_another_architecture_is_a_clear_error(ssl_run, tmp_path):
    with pytest.raises(WeightLoadError, match=r"holds a 'resnet8' model but this run builds 'simple_cnn'.*"
                                              r"set model.name=resnet8"):
        create_model("simple_cnn", num_classes=10, in_chans=1, pretrained=str(ssl_run))
    with pytest.raises(WeightLoadError, match=r"conv1.weight: file \(16, 1, 3, 3\) vs model \(16, 3, 3, 3\).*"
                                              r"model.in_chans=1"):
        create_model("resnet8", num_classes=10, in_chans=3, pretrained=str(ssl_run))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text((ssl_run / "config.yaml").read_text())
    with pytest.raises(WeightLoadError, match="is a run folder without weights"):
        create_model("resnet8", num_classes=10, in_chans=1, pretrained=str(tmp_path / "half"))


# ---------------------------------------------------------------------------------------------
# DDP


@pytest.mark.parametrize("method", ["simclr", "mim"])
def test_ssl_under_ddp(tmp_path, torchrun_available, method):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", "train",
                          str(DIGITS), *SSL, f"method={method}", "train.epochs=1", "--no-report",
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=e, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["env"]["world_size"] == 2 and info["method"] == method and info["status"] == "done"
    rows = [json.loads(r) for r in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["monitor"] for r in rows if r["split"] == "val"] == ["knn"]
    assert all(math.isfinite(r["loss"]) for r in rows if r["split"] == "train")


@pytest.mark.slow
def test_simclr_under_ddp_resumes_bit_exact(tmp_path, torchrun_available):
    """Negatives gathered across ranks, views drawn per rank: a run stopped mid-epoch under torchrun and
    resumed ends with the same backbone and projector as the uninterrupted one."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [str(DIGITS), *SSL, "method=simclr", "train.epochs=2", "train.checkpoint_every=4", "--no-report"]

    def torchrun(*a, env=None):
        res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", *a],
                             capture_output=True, text=True, env={**e, **(env or {})}, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    torchrun("train", *args, "--out", str(tmp_path / "full"))
    torchrun("train", *args, "--out", str(tmp_path / "part"), env={"VISIONSMITH_STOP_AFTER_STEPS": "6"})
    torchrun("resume", str(tmp_path / "part"), "--no-report")
    wa, sa, _ = load_checkpoint(tmp_path / "full" / "checkpoints")
    wb, sb, _ = load_checkpoint(tmp_path / "part" / "checkpoints")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(sa["method"][k], sb["method"][k]) for k in sa["method"])
