"""N-way K-shot evaluation of frozen features with prototypes (nearest class mean).

One episode: draw ``ways`` classes, then ``K`` support and ``queries`` query images per class
(disjoint); each class's prototype is the mean of its support features; every query goes to the
nearest prototype.  Accuracy is averaged over seeded episodes and reported with a 95% interval
(1.96 standard errors), as few-shot papers do (Snell et al., 2017, "Prototypical Networks").

Features are L2-normalised first.  Nearest class mean on unit-length features (cosine geometry)
is the standard strong baseline: SimpleShot (Wang et al., 2019) shows it matches far more
elaborate meta-learners, because normalising removes the feature-norm differences between
images that otherwise dominate Euclidean distances.

``resolve_source`` turns the CLI's ``RUN_OR_MODEL`` plus ``--data`` into (model, transform,
images); the evaluation itself (``fewshot_eval``) only needs a feature matrix and labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DataConfig, load_config
from ..data import BatchTransform, ImageDataset, build_datasets
from ..errors import UserError

DATASET_NAMES = ("fashion_mnist", "digits")
DEFAULT_IMAGE_SIZE = 32


# ---------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, eval_tf: BatchTransform, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Frozen pooled features: uint8 ``[N, C, H, W]`` -> float32 ``[N, D]`` on CPU, in order.

    ``D`` is ``model.num_features`` (``forward_head(..., pre_logits=True)``: the layer under the
    classifier).  The model runs in eval mode (batch-norm running stats, no dropout) and is put
    back in its previous mode afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = eval_tf(images[i:i + batch_size], None).to(device)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        out.append(feats.float().flatten(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


# ---------------------------------------------------------------------------------------------
# Episodes


def check_episode_args(ways: int, shots, episodes: int, queries: int) -> list[int]:
    """Argument checks that need no data; returns the shots as a list of ints."""
    shots = [int(k) for k in ([shots] if isinstance(shots, int) else shots)]
    if ways < 2:
        raise UserError(f"--ways must be at least 2 (a 1-way task is always right), got {ways}")
    if not shots or min(shots) < 1:
        raise UserError(f"every --shots value must be at least 1, got {shots}")
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    if queries < 1:
        raise UserError(f"--queries must be at least 1, got {queries}")
    return shots


def check_class_counts(labels: torch.Tensor, classes: list[str] | None, ways: int, shots: list[int],
                       queries: int) -> None:
    """Every class must hold ``max(shots) + queries`` images, and there must be ``ways`` classes.

    Raises ``ValueError`` naming the class with the fewest images and what to lower, so a bad
    request fails before any feature is computed.
    """
    counts = torch.bincount(labels, minlength=len(classes) if classes else 0)
    names = list(classes) if classes else [str(i) for i in range(len(counts))]
    present = [i for i in range(len(counts)) if counts[i] > 0]
    if ways > len(present):
        raise UserError(f"--ways {ways} is more than the {len(present)} classes with images in this data; "
                         f"use --ways {len(present)} or fewer")
    need = max(shots) + queries
    low = min(present, key=lambda i: int(counts[i]))
    n = int(counts[low])
    if n < need:
        opts = ([f"--shots to {n - queries}"] if n - queries >= 1 else []) + \
               ([f"--queries to {n - max(shots)}"] if n > max(shots) else [])
        hint = "lower " + (" or ".join(opts) if opts else f"--shots and --queries to add up to at most {n}")
        raise UserError(f"class {names[low]!r} has only {n} images, but {max(shots)}-shot episodes with "
                         f"{queries} queries need {need} per class; {hint}")


def _sample_episodes(labels: torch.Tensor, ways: int, per_class: int, episodes: int,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices int64 ``[E, ways, per_class]`` (distinct within an episode) and the classes ``[E, ways]``."""
    present = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in present.tolist()]
    idx = torch.empty(episodes, ways, per_class, dtype=torch.long)
    cls = torch.empty(episodes, ways, dtype=torch.long)
    # A Python loop over E * ways small randperms: milliseconds, and simpler than a padded table.
    for e in range(episodes):
        pick = torch.randperm(len(members), generator=g)[:ways]
        cls[e] = present[pick]
        for w, c in enumerate(pick.tolist()):
            m = members[c]
            idx[e, w] = m[torch.randperm(len(m), generator=g)[:per_class]]
    return idx, cls


def episode_accuracy(features: torch.Tensor, idx: torch.Tensor, shots: int) -> torch.Tensor:
    """Accuracy of each episode, float ``[E]``.

    ``features`` ``[N, D]`` (already L2-normalised); ``idx`` ``[E, W, shots + Q]``: per class the
    first ``shots`` are the support, the rest the queries.  All episodes at once:
    prototypes ``[E, W, D]``, queries ``[E, W*Q, D]``, distances ``[E, W*Q, W]``.
    """
    E, W, _ = idx.shape
    f = features[idx]  # [E, W, K+Q, D]
    protos = f[:, :, :shots].mean(2)  # [E, W, D]
    q = f[:, :, shots:]  # [E, W, Q, D]
    Q = q.shape[2]
    dist = torch.cdist(q.reshape(E, W * Q, -1), protos)  # [E, W*Q, W]
    truth = torch.arange(W).repeat_interleave(Q).expand(E, -1)  # query j of class w has label w
    return (dist.argmin(-1) == truth).float().mean(1)


def fewshot_eval(features: torch.Tensor, labels: torch.Tensor, ways: int = 5, shots=(1, 5), episodes: int = 200,
                 queries: int = 15, seed: int = 0, classes: list[str] | None = None) -> dict:
    """N-way K-shot prototype accuracy for each K in ``shots``.

    features: float ``[N, D]``; labels: int64 ``[N]``.  The same ``seed`` gives the same episodes
    (each K has its own generator, so adding a K never changes the others' numbers).

    Returns ``{"ways", "queries", "episodes", "seed", "chance", "n_images", "n_classes",
    "results": [{"shots", "acc", "ci95", "std"}, ...]}``; accuracies are fractions in [0, 1] and
    ``ci95 = 1.96 * std / sqrt(episodes)`` (std over episodes).
    """
    shots = check_episode_args(ways, shots, episodes, queries)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise UserError(f"features must be [N, D] with N = {labels.shape[0]} labels, got {tuple(features.shape)}")
    check_class_counts(labels, classes, ways, shots, queries)
    feats = F.normalize(features.float(), dim=1)
    rows = []
    for k in shots:
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        idx, _ = _sample_episodes(labels, ways, k + queries, episodes, g)
        acc = episode_accuracy(feats, idx, k)
        std = acc.std().item() if episodes > 1 else 0.0
        rows.append({"shots": k, "acc": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(episodes), "std": std})
    return {"ways": ways, "queries": queries, "episodes": episodes, "seed": seed, "chance": 1.0 / ways,
            "n_images": int(labels.shape[0]), "n_classes": int(torch.unique(labels).numel()), "results": rows}


# ---------------------------------------------------------------------------------------------
# RUN_OR_MODEL and --data


def data_config(data: str | Path | None, image_size: int | None = None) -> DataConfig:
    """``--data``: a dataset name (fashion_mnist, digits), a recipe ``.yaml`` (its ``data``
    section), a ``.csv`` of ``path,label`` rows, or a folder of class subfolders.  None:
    fashion_mnist.  ``image_size`` overrides the size (default: the recipe's, else 32)."""
    data = "fashion_mnist" if data is None else str(data)
    p = Path(data)
    if data in DATASET_NAMES:
        cfg = DataConfig(name=data, image_size=DEFAULT_IMAGE_SIZE)
    elif p.suffix in (".yaml", ".yml") and p.is_file():
        cfg = load_config(p).data
    elif p.suffix == ".csv" and p.is_file():
        cfg = DataConfig(name="csv", csv=str(p), image_size=DEFAULT_IMAGE_SIZE)
    elif p.is_dir():
        cfg = DataConfig(name="folder", root=str(p), image_size=DEFAULT_IMAGE_SIZE)
    else:
        raise UserError(f"--data {data!r} is not a dataset name ({', '.join(DATASET_NAMES)}), a recipe .yaml "
                         "file, a .csv file or a folder of class subfolders")
    if image_size is not None:
        cfg.image_size = int(image_size)
    return cfg


def load_split(cfg: DataConfig, split: str | None, seed: int = 0, fallback: str = "all") -> ImageDataset:
    """One split of ``cfg``'s data; ``"all"`` joins train, val and test.

    ``split=None``: test if it has images, else ``fallback`` ("val" for a run's own data, whose
    train images the model has seen; "all" for data the model never trained on).
    """
    parts = build_datasets(cfg, seed)
    if split is None:
        split = "test" if len(parts["test"]) else fallback
    if split == "all":
        ds = [d for d in parts.values() if len(d)]
        return ImageDataset(torch.cat([d.images for d in ds]), torch.cat([d.labels for d in ds]),
                            list(ds[0].classes), f"{cfg.name}/all")
    if split not in parts:
        raise UserError(f"--split {split!r} is not one of train, val, test, all")
    if not len(parts[split]):
        have = ", ".join(k for k, v in parts.items() if len(v))
        raise UserError(f"split {split!r} of data {cfg.name!r} has no images; use --split with one of {have}, all")
    return parts[split]


@dataclass
class FeatureSource:
    """What ``fewshot`` runs on: a frozen model, its eval transform and one split of images."""

    model: nn.Module
    eval_tf: BatchTransform
    dataset: ImageDataset
    info: dict = field(default_factory=dict)  # source, model, weights, data, split, image_size


def resolve_source(run_or_model: str | Path, data: str | Path | None = None, split: str | None = None,
                   image_size: int | None = None, pretrained: bool = True,
                   device: torch.device | str = "cpu", check=None) -> FeatureSource:
    """``RUN_OR_MODEL`` -> model + eval transform + images.

    - a run folder (has ``config.yaml``): its trained weights; by default its own data's test
      split (val when there is none); ``data`` points it at other images instead (novel classes).
    - a registered model name: ``create_model(name, num_classes=0)`` with its embedded pretrained
      weights when it has any (``pretrained=False``: random init, a baseline), on ``data``
      (default fashion_mnist) at ``image_size`` (default 32), test split else all images.

    ``check(dataset)`` runs after the images are loaded and before the model is built, so bad
    arguments fail before the expensive part.
    """
    from ..engine.build import build_transforms, load_trained
    from ..models import create_model, get_model_entry

    p = Path(run_or_model)
    if (p / "config.yaml").is_file():
        from ..config import ConfigError
        from ..engine.checkpoint import CheckpointError
        try:
            run_cfg = load_config(p / "config.yaml")
        except ConfigError as e:
            raise CheckpointError(f"{p}/config.yaml: {e}") from None
        own = data is None
        dcfg = run_cfg.data if own else data_config(data, image_size or run_cfg.data.image_size)
        if image_size is not None:
            dcfg.image_size = int(image_size)
        ds = load_split(dcfg, split, run_cfg.seed if own else 0, fallback="val" if own else "all")
        if check:
            check(ds)
        cfg, model, _, _ = load_trained(p, device=device)
        cfg.data.image_size = dcfg.image_size
        _, eval_tf = build_transforms(cfg, model)
        info = {"source": "run", "model": cfg.model.name, "weights": str(p)}
    elif p.exists() or len(p.parts) > 1:
        raise UserError(f"{p} is neither a run folder (a folder with config.yaml) nor a registered model name")
    else:
        entry = get_model_entry(str(run_or_model))  # KeyError naming the known models
        dcfg = data_config(data, image_size)
        ds = load_split(dcfg, split)
        if check:
            check(ds)
        use_weights = bool(pretrained and entry.pretrained)
        model = create_model(entry.name, num_classes=0, pretrained=use_weights).to(device)
        pc = getattr(model, "pretrained_cfg", {}) or {}
        in_chans = int(pc.get("input_size", (3,))[0])
        eval_tf = BatchTransform(False, dcfg.image_size, in_chans)  # pixels: the model normalises them
        info = {"source": "model", "model": entry.name,
                "weights": entry.pretrained[0] if use_weights else "random init"}
    info.update(data=dcfg.name if dcfg.name in DATASET_NAMES else str(dcfg.root or dcfg.csv or dcfg.name),
                split=ds.name.rsplit("/", 1)[-1], image_size=dcfg.image_size)
    return FeatureSource(model.eval(), eval_tf, ds, info)
