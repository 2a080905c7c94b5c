"""Zero-shot classification with a local CLIP model: class names as text prompts, no training.

Each class gets a text embedding: the prompt templates (``"a photo of a {}."``) filled with the
class name, encoded, L2-normalised and averaged, then normalised again (the prompt ensembling of
Radford et al., 2021, "CLIP", section 3.1.4).  An image goes to the class whose text embedding
has the highest cosine similarity with its image embedding.

The model is read only from a local folder written by ``CLIPModel.save_pretrained`` together
with its tokenizer (``local_files_only=True``): nothing here may resolve a hub id.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import BatchTransform
from ..errors import UserError
from ..models._base import PixelNorm
from ..models.weights import WeightLoadError

# openai/clip-vit-* preprocessor_config.json values, used when the folder has none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_PROMPTS = ("a photo of a {}.",)


class ClipPreprocess:
    """uint8 images ``[N, C, h, w]`` -> CLIP's ``pixel_values`` ``[N, C, S, S]``: the eval ``BatchTransform``
    (resize, channel matching: [0, 1] pixels), then the image processor's ``(x - mean) / std``.  A
    ``transformers`` CLIPModel is not a visionsmith model: it does not normalise its input itself, so
    the normalisation stays here.  ``image_size`` and ``in_chans`` are those of the pixel transform."""

    def __init__(self, image_size: int, in_chans: int, mean, std):
        self.pixels = BatchTransform(False, image_size, in_chans)
        self.norm = PixelNorm(mean, std, in_chans)
        self.image_size, self.in_chans = self.pixels.image_size, self.pixels.in_chans

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.norm(self.pixels(images, generator))


def clip_config(folder: str | Path):
    """The ``CLIPConfig`` of a local folder, or a one-line ``WeightLoadError`` saying what is wrong
    (cheap: reads config.json only, so callers check the folder before loading any data)."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise WeightLoadError(f"{folder} is not a folder; zero-shot needs a local CLIP model folder written by "
                              "CLIPModel.save_pretrained() (with its tokenizer); nothing is downloaded")
    if not (folder / "config.json").is_file():
        raise WeightLoadError(f"{folder} has no config.json; it is not a transformers model folder")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise WeightLoadError(f"{folder}/config.json is not a transformers config: {e}") from None
    if config.model_type != "clip":
        raise WeightLoadError(f"{folder} holds a {config.model_type!r} model, not a CLIP model (model_type 'clip'); "
                              "zero-shot needs a joint image-text model")
    return config


def check_prompts(prompts) -> list[str]:
    """The prompt templates as a list; each must have a ``{}`` for the class name."""
    prompts = list(prompts)
    if not prompts or any("{}" not in p for p in prompts):
        raise UserError(f"every --prompt needs a '{{}}' where the class name goes, got {prompts}")
    return prompts


def load_clip(folder: str | Path, device: torch.device | str = "cpu"):
    """(CLIPModel in eval mode, tokenizer, image transform) from a local ``save_pretrained`` folder.

    A missing folder, a folder holding another kind of model, missing weights or a missing
    tokenizer is a one-line ``WeightLoadError``.  The transform resizes to the vision config's
    ``image_size`` (a square resize, not CLIPProcessor's shortest-side resize + centre crop:
    dataset images here are already square) and normalises with the mean/std saved in the
    folder (``image_mean_std``), else CLIP's.
    """
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    config = clip_config(folder)
    # Check for the files: without them transformers 5 quietly builds an empty CLIP tokenizer
    # that maps every word to <unk>, and every class would get the same text embedding.
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise WeightLoadError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); save it "
                              "next to the model with tokenizer.save_pretrained() or processor.save_pretrained()")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per call is noise in a CLI table
    try:
        model, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                                output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightLoadError(f"could not load the CLIP weights in {folder}: {e}") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys", ()))
    if missing:  # transformers would fill them with random values and carry on
        raise WeightLoadError(f"the weights in {folder} are not a whole CLIPModel: {len(missing)} missing "
                              f"(e.g. {', '.join(missing[:3])})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise WeightLoadError(f"{folder} has no usable tokenizer (save it next to the model with "
                              f"tokenizer.save_pretrained): {e}") from None
    mean, std = image_mean_std(folder)
    vc = config.vision_config
    tf = ClipPreprocess(vc.image_size, vc.num_channels, mean, std)
    return model.to(device).eval(), tokenizer, tf


def image_mean_std(folder: Path) -> tuple[tuple, tuple]:
    """The image processor's normalisation saved in ``folder``, else CLIP's.  Older transformers
    write ``preprocessor_config.json``; 5.x writes ``processor_config.json`` with the image
    processor nested under ``"image_processor"``."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        try:
            d = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        d = d.get(key, {}) if key else d
        if isinstance(d, dict) and d.get("image_mean") and d.get("image_std"):
            return tuple(d["image_mean"]), tuple(d["image_std"])
    return CLIP_MEAN, CLIP_STD


def _pooled(out) -> torch.Tensor:
    # transformers >= 5 returns a model output with the projected embedding in pooler_output,
    # older versions the tensor itself.
    return out.pooler_output if hasattr(out, "pooler_output") else out


@torch.no_grad()
def text_embeddings(model, tokenizer, class_names: list[str], prompts=DEFAULT_PROMPTS) -> torch.Tensor:
    """Unit-length class embeddings ``[K, E]``: mean over the prompt templates of each class."""
    device = next(model.parameters()).device
    max_len = model.config.text_config.max_position_embeddings
    out = []
    for name in class_names:
        texts = [t.format(name.replace("_", " ")) for t in prompts]
        tok = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        emb = _pooled(model.get_text_features(input_ids=tok["input_ids"].to(device),
                                              attention_mask=tok["attention_mask"].to(device)))
        out.append(F.normalize(F.normalize(emb.float(), dim=-1).mean(0), dim=-1))  # [P, E] -> [E]
    return torch.stack(out).cpu()


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor, tf: ClipPreprocess, batch_size: int = 128) -> torch.Tensor:
    """Unit-length image embeddings ``[N, E]`` for uint8 images ``[N, C, H, W]``."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = tf(images[i:i + batch_size], None).to(device)  # [B, 3, S, S], S = vision image_size
        out.append(F.normalize(_pooled(model.get_image_features(pixel_values=x)).float(), dim=-1).cpu())
    return torch.cat(out)


def zeroshot_eval(clip_folder: str | Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                  prompts=DEFAULT_PROMPTS, batch_size: int = 128, device: torch.device | str = "cpu") -> dict:
    """Zero-shot accuracy of a local CLIP model on uint8 ``images`` ``[N, C, H, W]`` with int64
    ``labels`` ``[N]`` indexing ``class_names``.

    Returns ``{"acc", "top5" (only with >= 5 classes), "n", "classes", "prompts",
    "per_class": [{"class", "acc", "n"}, ...]}``; a class without images has ``acc`` None.
    """
    prompts = check_prompts(prompts)
    if len(class_names) < 2:
        raise UserError(f"zero-shot needs at least 2 class names, got {class_names}")
    model, tokenizer, tf = load_clip(clip_folder, device)
    text = text_embeddings(model, tokenizer, list(class_names), prompts)  # [K, E]
    img = image_embeddings(model, images, tf, batch_size)  # [N, E]
    sims = img @ text.T  # [N, K] cosine similarities
    labels = torch.as_tensor(labels, dtype=torch.long)
    correct = sims.argmax(1) == labels
    res = {"acc": correct.float().mean().item(), "n": int(labels.numel()), "classes": list(class_names),
           "prompts": prompts}
    if len(class_names) >= 5:
        res["top5"] = (sims.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    res["per_class"] = [{"class": c, "n": int((labels == i).sum()),
                         "acc": correct[labels == i].float().mean().item() if (labels == i).any() else None}
                        for i, c in enumerate(class_names)]
    return res
