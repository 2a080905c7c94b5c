"""Typed config: dataclasses read from YAML, with dotted overrides from the command line.

Unknown keys and wrong types are ``ConfigError``s that name the key and what is allowed; the
resolved config is saved in every run folder and checkpoint (``to_dict``).  No exec, no
inheritance chains: a recipe is one YAML file.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A config key or value is wrong; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    name: str = "mobilenetv2"  # a registered model (`visionsmith models`)
    pretrained: bool | str = False  # True: the embedded weights; a path: a local weight file
    in_chans: int = 3
    drop_rate: float = 0.2
    kwargs: dict = field(default_factory=dict)  # extra factory arguments, e.g. {stem_stride: 1}


@dataclass
class AugmentConfig:
    hflip: bool = True
    scale: tuple[float, float] = (0.85, 1.0)  # random-resized-crop area range; (1, 1) = no crop
    translate: float = 0.0  # max shift as a fraction of the side


@dataclass
class DataConfig:
    # classification: fashion_mnist, digits, folder, csv; segmentation: scenes (fashion-mnist scenes, embedded),
    # masks (root/images + root/masks PNGs), voc (Pascal VOC layout), coco (root/annotations/<split>.json + images);
    # detection: scenes, coco, voc (Annotations/*.xml), yolo (images/<split> + labels/<split> txt)
    # enhancement: photos (the embedded photographs), images (a folder of clean images)
    name: Literal["fashion_mnist", "digits", "folder", "csv", "scenes", "masks", "voc", "coco", "yolo",
                  "photos", "images"] = "fashion_mnist"
    root: str | None = None  # folder: root/<class>/*.png; csv: base folder for relative paths; masks/voc/coco: the dataset
    csv: str | None = None  # csv: file with `path,label` rows
    classes: list[str] | None = None  # csv: the class list (default: sorted labels seen)
    image_size: int = 32  # model input side in pixels
    cache_size: int | None = None  # folder/csv: side images are decoded to once (default image_size)
    val_fraction: float = 0.1  # held out of train, stratified, by seed
    test_fraction: float = 0.0  # folder/csv/digits without a test split: held out too
    train_limit: int | None = None  # use only the first N (shuffled) training images
    grayscale: bool = False  # decode folder/csv images as one channel
    strict: bool = False  # fail on the first bad file instead of reporting and skipping it
    max_pixels: int = 89_478_485  # larger images are refused as decompression bombs (Pillow's limit)
    # false: unlabelled images for self-supervised pretraining (method simclr/mim).  Labels and class
    # folders are ignored (a folder's images may lie anywhere under root); all images train, there is
    # no val/test split and so no kNN monitor.
    labels: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EarlyStopConfig:
    metric: str | None = None  # e.g. val/acc; null: the task's headline metric (val/acc, val/miou)
    patience: int = 0  # epochs without improvement before stopping; 0 = off
    mode: Literal["max", "min"] | None = None  # null: the task's direction for its headline


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.3
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global grad norm
    ema: bool = False
    ema_decay: float = 0.999
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, off on CPU
    channels_last: bool = True  # NHWC: 2-4x faster convolutions on CPU
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    select: Literal["val", "last"] = "val"  # the run's result: the weights of the best validation epoch, or
    # the last epoch's (a fixed schedule, as super-resolution papers train: for when validation is too
    # small or unlike the test data to pick an epoch; validation is still scored and plotted)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at epoch ends)
    log_every: int = 20  # steps between train lines in metrics.jsonl
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    eval_batch_size: int = 256


@dataclass
class LoraConfig:
    r: int = 8  # rank of the low-rank update
    alpha: float = 16.0  # update scale alpha / r
    dropout: float = 0.0
    # Module-name patterns (regular expressions, full match) to adapt; None: every Linear and
    # non-depthwise Conv2d outside the classifier.  `visionsmith models NAME --modules` lists names.
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)  # patterns removed from the targets
    # Per-module ranks, {pattern: rank} (peft's rank_pattern: a pattern matches the end of a module
    # name); modules it does not match get `r`.  E.g. {'features\.[0-9]\..*': 4} for early blocks.
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)  # the same for alpha (the scale is alpha / rank)
    # lora: which biases train beside the adapters (peft's `bias`): none, all (every bias in the model,
    # BatchNorm shifts included: LoRA + BitFit) or lora_only (biases of the adapted layers)
    bias: Literal["none", "all", "lora_only"] = "none"
    # also train the affine scale and shift of every normalisation layer (BatchNorm/LayerNorm/GroupNorm)
    norm: bool = False
    # module-name patterns (regular expressions, full match) whose own weights train in full beside
    # the adapters, as peft's modules_to_save; e.g. ['features\.0\..*'] for a small stem
    train_full: list[str] = field(default_factory=list)
    # LoRA+ (Hayou et al. 2024): the B factors learn at lr x lr_ratio_b (the paper uses 16; B starts at
    # zero and A at random, so equal rates under-train B); 1 = plain LoRA
    lr_ratio_b: float = 1.0
    # DoRA (Liu et al. 2024, peft's use_dora): each adapted weight split into a learned per-output
    # magnitude and a LoRA-updated direction
    dora: bool = False


@dataclass
class AdaptConfig:
    """How much of a pretrained model trains (surgery/transfer.py, surgery/peft.py)."""
    # full: everything; linear: the head only (linear probe); partial: the last `blocks` blocks + head;
    # bitfit: biases + head; lora/loha/lokr/ia3: peft adapters + head; prompt: visual prompt tuning (ViT)
    mode: Literal["full", "linear", "partial", "bitfit", "lora", "loha", "lokr", "ia3", "prompt"] = "full"
    blocks: int = 1  # partial: how many of the last blocks train
    layer_decay: float = 1.0  # full/partial: lr x decay^(blocks above); 1 = off (e.g. 0.75 for ViT fine-tuning)
    # The new classifier's lr = train.lr x head_lr: a fresh head wants a larger step than a pretrained
    # backbone or its adapters can take (every mode; 1 = the same rate).
    head_lr: float = 1.0
    # BatchNorm running statistics of frozen layers.  auto: frozen for linear (a fixed feature
    # extractor), updated otherwise (adapting statistics to the new data trains no parameter).
    bn_stats: Literal["auto", "frozen", "update"] = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_tokens: int = 10  # prompt: learnable tokens inserted after the embeddings


@dataclass
class DistillConfig:
    """Knowledge distillation (methods/distill.py); ``method: distill``."""
    teacher: str | None = None  # a run folder (its best weights), or a registered model name (pretrained)
    kind: Literal["logit", "feature", "both"] = "logit"
    temperature: float = 4.0  # softening of both distributions (Hinton et al. 2015)
    alpha: float = 0.7  # weight of the distillation term; (1 - alpha) on the labels
    feature_weight: float = 1.0  # feature/both: weight of the projected-feature MSE (FitNets)


@dataclass
class AdversarialConfig:
    """Adversarial training (methods/adversarial.py); ``method: adversarial``.  eps and step sizes
    are in [0, 1] pixel units, whatever the model's normalisation."""
    kind: Literal["pgd", "fgsm", "trades"] = "pgd"  # PGD-AT (Madry), fast FGSM-RS (Wong), TRADES (Zhang)
    eps: float = 0.1
    norm: Literal["linf", "l2"] = "linf"
    steps: int = 7  # attack steps per training batch (pgd, trades)
    step_size: float | None = None  # None: 2.5 * eps / steps (pgd, trades), 1.25 * eps (fgsm)
    trades_beta: float = 6.0  # weight of the robustness (KL) term
    eval_steps: int = 10  # PGD steps of the per-epoch robust-accuracy monitor (val/robust_acc)
    eval_images: int = 1000  # validation images the monitor attacks


@dataclass
class PruneConfig:
    """Pruning (surgery/compress.py, workflows/prune.py), written by ``visionsmith prune``: the model is
    ``source``'s trained model (all its weights, the classifier too) pruned, then fine-tuned with
    this config's train section.  A rebuild repeats the pruning exactly, so resume works."""
    source: str | None = None  # the trained run folder that is pruned; null: not a pruning run
    kind: Literal["structured", "unstructured"] = "structured"  # remove channels / zero single weights
    amount: float = 0.0  # fraction removed, in [0, 1): of each layer's channels or weights (scope layer)
    importance: Literal["l1", "l2"] = "l2"  # structured: the weight norm that ranks channels
    scope: Literal["layer", "global"] = "layer"  # layer: the same fraction everywhere; global: ranked together
    recalibrate: int = 1024  # training images that re-estimate BatchNorm statistics after pruning; 0: off


@dataclass
class SSLConfig:
    """Self-supervised pretraining (methods/ssl*.py); ``method: simclr`` or ``method: mim``.

    The loss never sees a label.  With labelled data the labels feed only the kNN monitor that
    replaces validation accuracy (a frozen-feature k-nearest-neighbour classifier)."""
    # simclr (Chen et al. 2020): two augmented views per image, NT-Xent over the (global) batch
    temperature: float = 0.2
    proj_hidden: int = 512  # projector MLP: features -> hidden (BN, ReLU) -> proj_dim
    proj_dim: int = 128
    crop_scale: tuple[float, float] = (0.25, 1.0)  # random-resized-crop area range of each view
    hflip: bool = True
    jitter: float = 0.4  # colour distortion: brightness, contrast (and saturation) x U[1-j, 1+j], p=0.8
    gray_p: float = 0.2  # RGB input: chance that a view is turned gray
    # mim (SimMIM, Xie et al. 2022): hide random squares of the input, predict their pixels
    mask_ratio: float = 0.6
    mask_patch: int = 4  # side of a masked square, input pixels (data.image_size must be a multiple)
    # kNN monitor (labelled data only): val images by their k most similar train features
    knn_k: int = 20
    knn_temperature: float = 0.07  # vote weight exp(cosine / T) (Wu et al. 2018)
    knn_bank: int = 10000  # labelled train images in the memory bank (a fixed random subset)


@dataclass
class SegConfig:
    """Semantic segmentation (tasks/segmentation.py); ``task: segmentation``."""
    head: Literal["fpn", "deeplabv3plus"] = "fpn"  # the decoder on the backbone's feature pyramid
    channels: int = 128  # decoder width
    min_stride: int = 4  # the finest pyramid level the decoder reads
    dice_weight: float = 0.0  # loss = cross-entropy (255 ignored) + dice_weight x Dice
    # decoder norm: gn (GroupNorm: independent of the batch size) or bn (BatchNorm: folds into the
    # convolutions at export, so an INT8 ONNX decoder runs as integer convs end to end)
    norm: Literal["gn", "bn"] = "gn"


@dataclass
class DetConfig:
    """Object detection (tasks/detection.py); ``task: detection``.  FCOS (one stage) or Faster R-CNN (two
    stages) on the backbone pyramid; ``model.name: rt_detr | hf_detector`` for the DETR family instead."""
    head: Literal["fcos", "faster_rcnn"] = "fcos"
    channels: int = 96  # FPN neck and head width
    convs: int = 2  # 3x3 conv blocks in each of the head's classification and regression towers
    min_stride: int = 8  # the finest pyramid level the head reads (levels from it to the deepest)
    range_scale: float = 4.0  # a level of stride s regresses objects reaching up to range_scale x s
    radius: float = 1.5  # centre sampling: positives lie within radius x stride of an object's centre
    score_threshold: float = 0.05  # detections kept before NMS score at least this
    nms_iou: float = 0.6  # NMS IoU threshold
    class_agnostic_nms: bool = False  # true: boxes of any class suppress each other (one label per object)
    max_detections: int = 100  # per image, after NMS
    pre_nms: int = 1000  # top-scoring candidates per image that enter NMS


@dataclass
class EnhanceConfig:
    """Image enhancement (tasks/enhancement.py); ``task: enhancement``.  Inputs are made from clean
    photographs by a degradation (data/degrade.py); the network learns to undo it."""
    degradation: Literal["noise", "sr"] = "noise"  # noise: denoising; sr: super-resolution
    noise: Literal["gaussian", "poisson"] = "gaussian"
    sigma: float = 25.0  # Gaussian noise std on the 0-255 scale: what val/test are scored at
    sigma_max: float = 0.0  # > 0: blind training, each image's sigma drawn uniformly from [0, sigma_max]
    eval_sigmas: list[float] = field(default_factory=list)  # gaussian: the test evaluation also scores the
    # network and the baselines at each of these sigmas (a blind model's table); the headline stays at `sigma`
    peak: float = 30.0  # poisson: photons at white (lower: noisier)
    scale: int = 2  # sr: the upscaling factor (2, 3, 4)
    loss: Literal["l1", "mse", "charbonnier"] = "l1"
    tile: int = 256  # inference tile side in input pixels (0: the whole image at once)
    baselines: bool = True  # the test evaluation also scores the classical methods on the same inputs
    eval_seed: int = 0  # the noise of the val/test images: the same for every run and baseline


@dataclass
class CodecConfig:
    """Learned image compression (tasks/compression.py); ``task: compression``, ``method: rate_distortion``.
    The loss is ``lmbda * 255^2 * MSE + bits per pixel`` (CompressAI's convention): a larger lmbda
    buys quality with bits.  Several lmbdas train one variable-rate model (a learned gain per rate on
    the latent, Cui et al. CVPR 2021): each training image draws one of them, and the run is a whole
    rate-distortion curve, one point per lmbda (``visionsmith compress --level K`` picks the rate)."""
    lmbdas: list[float] = field(default_factory=lambda: [0.013])  # ascending: level 0 is the fewest bits
    # (CompressAI's MSE models use 0.0018 ... 0.0483)
    baselines: list[str] = field(default_factory=lambda: ["jpeg", "webp", "avif", "jpeg2000"])  # classical codecs
    # the test evaluation runs on the same photographs (Pillow); [] skips them


@dataclass
class GenConfig:
    """Image generation (tasks/generation.py); ``task: generation`` with ``method: diffusion``, ``vae`` or ``gan``.
    Samples are scored in the feature space of a Fashion-MNIST classifier (``feature_run``)."""
    conditional: bool = False  # learn p(image | class) as well: sample --class K, classifier-free guidance
    class_dropout: float = 0.1  # diffusion, conditional: share of training images shown without their class
    # (what classifier-free guidance needs; 0 disables guidance)
    timesteps: int = 1000  # diffusion: the training noise schedule's length (DDPM sampling takes all of them)
    schedule: Literal["linear", "cosine"] = "linear"  # diffusion: beta schedule (cosine: Nichol & Dhariwal 2021)
    prediction: Literal["epsilon", "v"] = "epsilon"  # diffusion: what the network predicts
    sampler: Literal["ddim", "ddpm"] = "ddim"  # how eval and `sample` draw images by default
    steps: int = 50  # sampler steps (ddpm always takes `timesteps`)
    guidance: float = 1.0  # classifier-free guidance weight at eval (1: plain conditional sampling)
    latent_dim: int = 32  # vae, gan: latent size
    beta: float = 1.0  # vae: weight of the KL term (beta-VAE, Higgins et al. 2017; 1: the ELBO)
    gan_loss: Literal["hinge", "ns"] = "hinge"  # gan: hinge (Lim & Ye 2017) or non-saturating (Goodfellow 2014)
    r1: float = 0.0  # gan: weight gamma of the R1 penalty on real images (0: off)
    d_lr_scale: float = 1.0  # gan: discriminator learning rate / train.lr
    betas: tuple[float, float] = (0.5, 0.999)  # gan: Adam betas of both players
    eval_samples: int = 2000  # images drawn for the test scores (precision/recall need a few thousand)
    val_samples: int = 500  # images drawn at each validation (a cheaper, noisier Frechet distance)
    val_steps: int = 20  # sampler steps at validation
    fid: bool = False  # the test evaluation also computes FID in InceptionV3 features (metrics/inception.py) for
    # fid_samples samples against as many test images, with its floor (train vs test): ~0.2 s an image on a CPU
    fid_samples: int = 1000
    feature_run: str = "auto"  # the classifier whose features score samples: a run folder, or auto
    # (recipes/fd-classifier-fashion-mnist.yaml, trained once into the cache on first use)
    eval_seed: int = 0  # the noise the eval samples start from: the same for every run


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    task: str = "classification"  # a registered task (tasks/<task>.py): classification, segmentation, detection,
    # enhancement, generation, compression
    method: Literal["supervised", "distill", "simclr", "mim", "adversarial", "diffusion", "vae", "gan",
                    "rate_distortion"] = "supervised"
    device: str = "auto"  # auto: cuda when available, else cpu
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    det: DetConfig = field(default_factory=DetConfig)
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)


# ---------------------------------------------------------------------------------------------
# Reading, validating, overriding


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float, lists to tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, "
                              f"got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in typing.get_args(tp):
            value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not allowed; use {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _unknown(key: str, prefix: str, allowed: list[str]) -> ConfigError:
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {prefix + near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {prefix + key!r}.{hint} Allowed under "
                       f"{prefix.rstrip('.') or 'the top level'}: {', '.join(allowed)}")


def _build(cls: type, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), prefix, names)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def from_dict(data: dict | None) -> Config:
    cfg = _build(Config, data or {})
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def parse_value(text: str) -> Any:
    """An override's value as YAML: ``3`` -> int, ``1e-3`` -> float, ``[1, 2]`` -> list, ``none``/``null`` -> None."""
    if text.lower() in ("none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (a copy); keys are checked when built."""
    import copy
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        node, parts = data, key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(text.strip())
    return data


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def find_recipe(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a recipe in ``recipes/`` (``fashion-mnist-quick``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (RECIPES / f"{name_or_path}.yaml", RECIPES / str(name_or_path)):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in RECIPES.glob("*.yaml")))
    raise ConfigError(f"no config file or recipe named {str(name_or_path)!r}; recipes: {known}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (recipes live in recipes/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    return from_dict(apply_overrides(data, list(overrides)))


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


_CHECKS: list = []  # rules registered by the layers that own them (e.g. methods.registry: what a method needs)


def add_check(fn) -> None:
    """Run ``fn(cfg)`` (raising ``ConfigError``) in every ``validate``; how a later layer adds the rules only
    it knows without this module importing it."""
    _CHECKS.append(fn)


def _one_component(name: str) -> bool:
    """A run name becomes a folder under runs/: one plain path component, nothing that climbs out."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def validate(cfg: Config) -> None:
    """Range checks that types cannot express, then the registered checks."""
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.max_steps is None or cfg.train.max_steps >= 1, "train.max_steps must be >= 1 (or null: no cap)"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: checkpoint at epoch ends only)"),
        (cfg.train.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.train.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (cfg.train.threads is None or cfg.train.threads >= 1, "train.threads must be >= 1 (or null: torch's choice)"),
        (cfg.train.grad_clip is None or cfg.train.grad_clip > 0, "train.grad_clip must be > 0 (or null: off)"),
        (cfg.train.early_stop.patience >= 0, "train.early_stop.patience must be >= 0 (0: off)"),
        (_one_component(cfg.name), f"name={cfg.name!r} must be one folder name (no '/', '..' or absolute path); "
         "choose where the run folder goes with --out"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (len(cfg.codec.lmbdas) >= 1 and all(v > 0 for v in cfg.codec.lmbdas), "codec.lmbdas must be one or more numbers "
         "> 0 (the weight of the distortion; larger: better quality, more bits)"),
        (list(cfg.codec.lmbdas) == sorted(set(cfg.codec.lmbdas)), f"codec.lmbdas={cfg.codec.lmbdas} must be ascending "
         "and distinct (level 0 is the lowest rate)"),
        (len(cfg.codec.lmbdas) <= 255, "codec.lmbdas: at most 255 rates"),
        (set(cfg.codec.baselines) <= {"jpeg", "webp", "avif", "jpeg2000"},
         f"codec.baselines={cfg.codec.baselines}: the classical codecs are jpeg, webp, avif, jpeg2000"),
        (0 <= cfg.data.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
        (0 <= cfg.data.test_fraction < 1, "data.test_fraction must be in [0, 1)"),
        (cfg.data.image_size >= 8, "data.image_size must be >= 8"),
        (0 < cfg.data.augment.scale[0] <= cfg.data.augment.scale[1] <= 1,
         "data.augment.scale must be [min, max] with 0 < min <= max <= 1"),
        (0 <= cfg.train.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
        (0 < cfg.train.ema_decay < 1, "train.ema_decay must be in (0, 1)"),
        (cfg.data.name != "folder" or cfg.data.root, "data.root is required when data.name is 'folder'"),
        (cfg.data.name != "csv" or cfg.data.csv, "data.csv is required when data.name is 'csv'"),
        (cfg.adapt.blocks >= 1, "adapt.blocks must be >= 1"),
        (0 < cfg.adapt.layer_decay <= 1, "adapt.layer_decay must be in (0, 1]"),
        (cfg.adapt.head_lr > 0, "adapt.head_lr must be > 0 (a multiplier of train.lr for the new head)"),
        (cfg.adapt.lora.r >= 1, "adapt.lora.r must be >= 1"),
        (cfg.adapt.lora.lr_ratio_b > 0, "adapt.lora.lr_ratio_b must be > 0 (1 = plain LoRA, 16 = LoRA+)"),
        (not (cfg.adapt.lora.dora and cfg.train.channels_last),
         "adapt.lora.dora=true needs train.channels_last=false: peft's DoRA views its convolution factors "
         "as contiguous memory and fails on channels-last weights"),
        (cfg.adapt.mode == "lora" or (cfg.adapt.lora.bias == "none" and cfg.adapt.lora.lr_ratio_b == 1
                                      and not cfg.adapt.lora.dora),
         f"adapt.lora.bias, .lr_ratio_b and .dora need adapt.mode=lora (got {cfg.adapt.mode}); "
         "other modes can train extra layers with adapt.lora.norm or adapt.lora.train_full"),
        (all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in cfg.adapt.lora.rank_pattern.values()),
         f"adapt.lora.rank_pattern: every rank must be an integer >= 1, got {cfg.adapt.lora.rank_pattern}"),
        (cfg.adapt.prompt_tokens >= 1, "adapt.prompt_tokens must be >= 1"),
        (cfg.seg.channels >= 1 and cfg.seg.min_stride >= 1, "seg.channels and seg.min_stride must be >= 1"),
        (cfg.seg.dice_weight >= 0, "seg.dice_weight must be >= 0"),
        (cfg.det.channels >= 1 and cfg.det.convs >= 0 and cfg.det.min_stride >= 1,
         "det.channels and det.min_stride must be >= 1, det.convs >= 0"),
        (cfg.det.range_scale > 0 and cfg.det.radius > 0, "det.range_scale and det.radius must be > 0"),
        (0 <= cfg.det.score_threshold < 1 and 0 < cfg.det.nms_iou <= 1,
         "det.score_threshold must be in [0, 1) and det.nms_iou in (0, 1]"),
        (cfg.det.max_detections >= 1 and cfg.det.pre_nms >= 1, "det.max_detections and det.pre_nms must be >= 1"),
        (cfg.enhance.sigma >= 0 and cfg.enhance.sigma_max >= 0 and cfg.enhance.peak > 0,
         "enhance.sigma and enhance.sigma_max must be >= 0, enhance.peak > 0"),
        (all(s > 0 for s in cfg.enhance.eval_sigmas), "enhance.eval_sigmas must all be > 0"),
        (cfg.enhance.scale in (2, 3, 4), "enhance.scale must be 2, 3 or 4"),
        (cfg.enhance.tile >= 0, "enhance.tile must be >= 0 (0: whole images)"),
        (cfg.distill.temperature > 0, "distill.temperature must be > 0"),
        (0 <= cfg.distill.alpha <= 1, "distill.alpha must be in [0, 1]"),
        (cfg.ssl.temperature > 0, "ssl.temperature must be > 0"),
        (cfg.ssl.knn_temperature > 0, "ssl.knn_temperature must be > 0"),
        (cfg.ssl.proj_hidden >= 1 and cfg.ssl.proj_dim >= 1, "ssl.proj_hidden and ssl.proj_dim must be >= 1"),
        (0 < cfg.ssl.crop_scale[0] <= cfg.ssl.crop_scale[1] <= 1,
         "ssl.crop_scale must be [min, max] with 0 < min <= max <= 1"),
        (0 <= cfg.ssl.jitter < 1, "ssl.jitter must be in [0, 1)"),
        (0 <= cfg.ssl.gray_p <= 1, "ssl.gray_p must be in [0, 1]"),
        (0 < cfg.ssl.mask_ratio < 1, "ssl.mask_ratio must be in (0, 1)"),
        (cfg.ssl.mask_patch >= 1, "ssl.mask_patch must be >= 1"),
        (cfg.ssl.knn_k >= 1, "ssl.knn_k must be >= 1"),
        (cfg.ssl.knn_bank >= 1, "ssl.knn_bank must be >= 1"),
        (0 <= cfg.adversarial.eps <= 1, f"adversarial.eps={cfg.adversarial.eps:g} is outside [0, 1]: eps is in "
         "[0, 1] pixel units (8/255 = 0.0314 is 8 grey levels)"),
        (cfg.adversarial.steps >= 1 and cfg.adversarial.eval_steps >= 1,
         "adversarial.steps and adversarial.eval_steps must be >= 1"),
        (cfg.adversarial.step_size is None or cfg.adversarial.step_size > 0, "adversarial.step_size must be > 0"),
        (cfg.adversarial.trades_beta >= 0, "adversarial.trades_beta must be >= 0"),
        (cfg.adversarial.eval_images >= 1, "adversarial.eval_images must be >= 1"),
        (0 <= cfg.prune.amount < 1, f"prune.amount={cfg.prune.amount:g} is outside [0, 1): it is the fraction of "
         "weights (or channels) removed, e.g. 0.5"),
        (cfg.prune.amount == 0 or cfg.prune.source, "prune.amount needs prune.source, the trained run folder to prune"),
        (cfg.prune.recalibrate >= 0, "prune.recalibrate must be >= 0 (0: keep the BatchNorm statistics)"),
        (not cfg.prune.source or cfg.adapt.mode == "full", f"prune.source fine-tunes every weight left after pruning: "
         f"adapt.mode must be full, not {cfg.adapt.mode!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for fn in _CHECKS:
        fn(cfg)
