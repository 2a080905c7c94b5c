"""Inference over an in-memory dataset: logits for every image, in order."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import BatchTransform, ImageDataset
from ..errors import UserError
from ..tasks import get_task


@torch.no_grad()
def predict_logits(model: nn.Module, ds: ImageDataset, transform: BatchTransform, batch_size: int,
                   device: torch.device, channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                   progress: str | None = None) -> torch.Tensor:
    """-> float32 logits [N, K] on CPU for ``ds.images`` [N, C, H, W], in dataset order."""
    was_training = model.training
    model.eval()
    out = []
    starts = range(0, len(ds), batch_size)
    bar = tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None)
    for i in bar:
        x = transform(ds.images[i:i + batch_size], None).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with ctx:
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def run_and_split(run_dir, split: str, which: str = "best"):
    """What evaluating a run folder on ``split`` needs: (cfg, model in eval mode on the best device,
    classes, all datasets, the split's dataset, eval transform, device).  An empty split or a class
    list that changed since training is a ValueError that says so."""
    from .build import build_transforms, load_trained

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, classes, _ = load_trained(run_dir, which, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = get_task(cfg).build_datasets(cfg.seed)
    if split not in data or not len(data[split]):
        raise UserError(f"split {split!r} is empty for data {cfg.data.name!r}; choose from "
                        f"{', '.join(k for k, v in data.items() if len(v))}")
    ds = data[split]
    if list(ds.classes) != list(classes):
        raise UserError(f"the run was trained on classes {classes} but the data now has {ds.classes}")
    _, eval_tf = build_transforms(cfg, model)
    return cfg, model, classes, data, ds, eval_tf, device


def evaluate_run(run_dir, split: str = "test", which: str = "best") -> dict:
    """Evaluate a run's weights on ``split`` with its task's metrics; writes ``eval.json`` (and the
    task's artefacts, e.g. the worst mistakes) for the best weights on the test split,
    ``eval-<split>[-last].json`` otherwise.  Returns the metrics dict.

    A run whose method trains no head (self-supervised pretraining) is scored by kNN on its frozen
    features (bank: ``ssl.knn_bank`` train images), marked ``monitor: "knn"``; its ``loss`` is the
    cross-entropy of the kNN vote shares."""
    import time
    from pathlib import Path

    from ..methods import method_spec
    from .runfolder import update_run_json, write_json

    run_dir = Path(run_dir)
    cfg, model, classes, data, ds, eval_tf, device = run_and_split(run_dir, split, which)
    task = get_task(cfg)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    if not method_spec(cfg.method).trains_head:  # a pretrained backbone, its head never trained: kNN
        from ..methods.ssl import knn_logits
        outputs = knn_logits(model, data["train"], ds, eval_tf, cfg.ssl, cfg.train.eval_batch_size, device)
        m = task.score(outputs, ds.labels, classes)
        m.update(monitor="knn", knn_k=cfg.ssl.knn_k, knn_bank=min(cfg.ssl.knn_bank, len(data["train"])))
    else:
        m = task.evaluate(model, ds, eval_tf, cfg.train.eval_batch_size, device, cfg.train.channels_last,
                          progress=f"eval {split}", keep_outputs=True)
        outputs = m.pop("outputs")
    secs = time.perf_counter() - t0
    # Only the best weights on test are the run's result (report, compare, run.json); any other
    # evaluation is written beside it and never replaces it.
    official = split == "test" and which == "best"
    m.update(task.eval_artifacts(run_dir if official else None, ds, outputs, m))
    m.update(split=split, weights=which, eval_s=round(secs, 2), eval_img_per_s=round(len(ds) / max(secs, 1e-9), 1))
    name = "eval.json" if official else f"eval-{split}{'' if which == 'best' else '-' + which}.json"
    write_json(run_dir / name, m)
    if official:
        test = {k: m[k] for k in task.test_keys}
        update_run_json(run_dir, test={**test, "monitor": "knn"} if "monitor" in m else test,
                        timing={**_timing(run_dir), "eval_s": round(secs, 2), "eval_img_per_s": m["eval_img_per_s"]})
    return m


def _timing(run_dir) -> dict:
    from .runfolder import read_json
    return read_json(run_dir / "run.json").get("timing", {})
