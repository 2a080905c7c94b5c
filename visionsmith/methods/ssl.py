"""Self-supervised pretraining, the parts both methods share: the base module and the kNN monitor.

The methods: ``simclr`` (contrastive, ``ssl_contrastive.py``) and ``mim`` (masked image modelling,
``ssl_masked.py``).  Both train the backbone only: the model's classifier is frozen (it is not in
the optimizer and, under DDP, no unused parameter is left waiting for a gradient) and is replaced
by whatever recipe starts from the pretrained backbone (``model.pretrained=<this run folder>``).

No loss here ever reads ``batch["label"]``.  With labelled data the labels serve only the kNN
monitor (``SSLMethod.evaluate``, used by the loop in place of classifier validation): each val
image is classified by a weighted vote of its ``k`` most similar training images in the frozen,
pooled, L2-normalised feature space (Wu et al. 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", sec. 3.4; the protocol of DINO, Caron et al. 2021).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SSLConfig
from ..tasks import task_class
from ..data import BatchTransform, ImageDataset

__all__ = ["SSLMethod", "extract_features", "knn_bank", "knn_logits", "knn_votes"]

BANK_SEED = 0  # the memory bank is the same subset of train in every epoch and every run


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The representation a linear probe reads: ``forward_head(..., pre_logits=True)``, [B, D]."""
    return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, eval_tf: BatchTransform, batch_size: int,
                     device: torch.device) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``[N, D]`` on CPU, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    out = [pooled_features(model, eval_tf(images[i:i + batch_size], None).to(device)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
              k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-nearest-neighbour class votes.

    bank [M, D] with int64 bank_labels [M]; queries [N, D] -> float32 [N, K], each row summing to 1.
    Similarity is the cosine; the ``k`` most similar bank rows vote for their class with weight
    ``exp(cos / temperature)``.
    """
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for i in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[i:i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [n, k]
        w = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes).scatter_add_(1, bank_labels[idx], w)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.empty(0, num_classes)


def knn_bank(n: int, size: int) -> torch.Tensor:
    """int64 indices of the memory bank: a fixed random subset of ``size`` of ``n`` train images."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(BANK_SEED))[:size].sort().values


def knn_logits(model: nn.Module, train_ds: ImageDataset, query_ds: ImageDataset, eval_tf: BatchTransform,
               cfg: SSLConfig, batch_size: int, device: torch.device) -> torch.Tensor:
    """kNN class scores of ``query_ds`` against a bank of ``train_ds``, as logits [N, K]: the log of
    the vote shares, floored at 1e-6 so the cross-entropy the task's metric reports stays finite."""
    idx = knn_bank(len(train_ds), cfg.knn_bank)
    bank = extract_features(model, train_ds.images[idx], eval_tf, batch_size, device)
    queries = extract_features(model, query_ds.images, eval_tf, batch_size, device)
    votes = knn_votes(bank, train_ds.labels[idx], queries, len(train_ds.classes), cfg.knn_k, cfg.knn_temperature)
    return votes.clamp_min(1e-6).log()


class SSLMethod(nn.Module):
    """Base of the self-supervised methods: holds ``self.model`` (so checkpoints see the model's own
    keys), freezes the parts of it the method does not train, and monitors by kNN accuracy."""

    def __init__(self, model: nn.Module, cfg: SSLConfig, frozen: nn.Module | None = None, task=None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        # the task whose metric scores the kNN vote: the one these methods are registered for by default
        self.task = task if task is not None else task_class("classification")()
        (frozen if frozen is not None else model.get_classifier()).requires_grad_(False)

    def evaluate(self, model: nn.Module, train_ds: ImageDataset, val_ds: ImageDataset, eval_tf: BatchTransform,
                 batch_size: int, device: torch.device) -> dict:
        """The val row of an epoch: kNN ``acc``, ``top5`` and ``macro_f1`` of ``model``'s frozen
        features (``monitor: "knn"`` marks them).  No loss: the kNN vote has none worth plotting
        next to the training loss."""
        m = self.task.score(knn_logits(model, train_ds, val_ds, eval_tf, self.cfg, batch_size, device),
                            val_ds.labels, val_ds.classes)
        return {"acc": m["acc"], "top5": m["top5"], "macro_f1": m["macro_f1"], "monitor": "knn"}
