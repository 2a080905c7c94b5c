"""Clean photographs for the enhancement task: the embedded set (``data.name=photos``) or your own
folder of images (``data.name=images``).

    splits = load_photos(cfg.data, in_chans, bank_size, stride)
    splits["train"].images   # uint8 [N, C, P, P]: a bank of overlapping patches of the training photos
    splits["val"].images     # list of uint8 [C, h, w]: crops of the validation photos (fast to score per epoch)
    splits["test"].images    # list of uint8 [C, H, W]: the held-out photographs, whole

The embedded set (every file declared with its sha256 in ``assets.PHOTO_ASSETS``): 27 colour photographs
from scikit-image, scikit-learn and Debian's ``opencv-doc``.  The 8 test photographs are never trained
on or used to choose the best epoch: astronaut, coffee, chelsea (scikit-image), china, flower
(scikit-learn), baboon, fruits, butterfly (opencv-doc).  Validation: rocket (scikit-image) and
building (opencv-doc).  The other 17 train.  Cartoons, renders, paintings and synthetic or already
noisy images in those packages are left out.

A folder (``data.root``): ``root/train``, ``root/val``, ``root/test`` when they exist, else every image
under ``root`` split by file with ``data.test_fraction`` (fixed seed: the same test files for every
run) and ``data.val_fraction`` (the run's seed).  Unreadable files are skipped and listed, like
every other data source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..assets import PHOTO_ASSETS, photo_asset_name, resolve
from .errors import DataError
from .images import load_image, pil_to_uint8

TEST = ("astronaut.png", "coffee.png", "chelsea.png", "china.jpg", "flower.jpg", "baboon.jpg", "fruits.jpg",
        "butterfly.jpg")
VAL = ("rocket.jpg", "building.jpg")
VAL_CROP = 256  # validation scores up to 4 crops of this side per photo: a few seconds per epoch


@dataclass
class PhotoDataset:
    """Clean images of one split.  ``images``: uint8 ``[N, C, P, P]`` (a patch bank) or a list of uint8
    ``[C, H, W]`` (whole photos or crops of any size); ``paths``: where each came from (a file, with
    the patch's top-left corner ``@y,x``).  No classes: enhancement has none."""

    images: torch.Tensor | list
    name: str
    paths: list[str]
    skipped: list = field(default_factory=list)
    classes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def patch_bank(photos: list[torch.Tensor], names: list[str], size: int, stride: int) -> tuple[torch.Tensor, list[str]]:
    """Every ``size`` x ``size`` patch at ``stride`` of each photo (the last row/column aligned to the
    border): uint8 ``[N, C, size, size]`` and ``"name@y,x"`` per patch.  Photos smaller than ``size``
    on a side give none."""
    out, where = [], []
    for img, name in zip(photos, names):
        _, h, w = img.shape
        if h < size or w < size:
            continue
        ys = sorted(set(list(range(0, h - size + 1, stride)) + [h - size]))
        xs = sorted(set(list(range(0, w - size + 1, stride)) + [w - size]))
        for y in ys:
            for x in xs:
                out.append(img[:, y:y + size, x:x + size])
                where.append(f"{name}@{y},{x}")
    if not out:
        raise DataError(f"no training photo is at least {size} pixels on each side; lower data.image_size "
                        "(or data.cache_size, the patch bank's side)")
    return torch.stack(out), where


def val_crops(photos: list[torch.Tensor], names: list[str], side: int = VAL_CROP) -> tuple[list, list[str]]:
    """Up to 4 non-overlapping ``side`` crops per photo (a smaller photo: itself, whole)."""
    out, where = [], []
    for img, name in zip(photos, names):
        _, h, w = img.shape
        if h < side or w < side:
            out.append(img)
            where.append(name)
            continue
        ys = [0, h - side] if h >= 2 * side else [(h - side) // 2]
        xs = [0, w - side] if w >= 2 * side else [(w - side) // 2]
        for y in ys:
            for x in xs:
                out.append(img[:, y:y + side, x:x + side].contiguous())
                where.append(f"{name}@{y},{x}")
    return out, where


def _embedded(in_chans: int) -> dict[str, tuple[list, list[str]]]:
    """{"train"|"val"|"test": (photos uint8 [C, H, W], file names)} of the embedded set, hash-checked."""
    split_of = {f: "test" for f in TEST} | {f: "val" for f in VAL}
    out: dict[str, tuple[list, list[str]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for _, file, _ in PHOTO_ASSETS:
        img = load_image(resolve(photo_asset_name(file)))  # AssetError (how to get it) when missing
        imgs, names = out[split_of.get(file, "train")]
        imgs.append(pil_to_uint8(img, in_chans))
        names.append(file)
    return out


def _folder(cfg, in_chans: int, seed: int) -> tuple[dict[str, tuple[list, list[str]]], list]:
    from . import splits
    from .folder import walk_files
    from .images import BadImageError, has_image_extension
    root = Path(cfg.root or "")
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root!r} is not a folder of images (data.name=images)")
    skipped: list = []

    def read(top: Path) -> tuple[list, list[str]]:
        imgs, names = [], []
        for p in walk_files(top, {os.path.realpath(top)}, set(), skipped, root):
            if not has_image_extension(p):
                continue
            try:
                imgs.append(pil_to_uint8(load_image(p, max_pixels=cfg.max_pixels), in_chans))
                names.append(os.path.relpath(p, root))
            except BadImageError as e:
                if cfg.strict:
                    raise DataError(f"{e} (data.strict=true stops at the first bad file)") from None
                skipped.append((str(p), e.reason))
        return imgs, names

    if (root / "train").is_dir():
        out = {s: read(root / s) if (root / s).is_dir() else ([], []) for s in ("train", "val", "test")}
    else:
        imgs, names = read(root)
        n = len(imgs)
        order = torch.randperm(n, generator=splits.generator(0, splits.SALT_TEST)).tolist()
        n_test = int(round(cfg.test_fraction * n)) if cfg.test_fraction else 0
        test, rest = order[:n_test], order[n_test:]
        rest = [rest[i] for i in torch.randperm(len(rest), generator=splits.generator(seed, splits.SALT_VAL)).tolist()]
        n_val = int(round(cfg.val_fraction * len(rest)))
        pick = lambda ix: ([imgs[i] for i in ix], [names[i] for i in ix])  # noqa: E731
        out = {"test": pick(test), "val": pick(rest[:n_val]), "train": pick(rest[n_val:])}
    if not out["train"][0]:
        raise DataError(f"{root} holds no readable training images (.png, .jpg, ...)")
    return out, skipped


def load_photos(cfg, in_chans: int, bank_size: int, stride: int, seed: int = 0) -> dict[str, PhotoDataset]:
    """``{"train": patch bank, "val": crops, "test": whole photos}`` for ``cfg`` (a ``DataConfig`` whose
    ``name`` is ``photos`` or ``images``)."""
    if cfg.name == "photos":
        src, skipped = _embedded(in_chans), []
    else:
        src, skipped = _folder(cfg, in_chans, seed)
    bank, where = patch_bank(*src["train"], bank_size, stride)
    crops, crop_names = val_crops(*src["val"])
    test, test_names = src["test"]
    return {"train": PhotoDataset(bank, f"{cfg.name}/train", where, skipped),
            "val": PhotoDataset(crops, f"{cfg.name}/val", crop_names),
            "test": PhotoDataset(list(test), f"{cfg.name}/test", list(test_names))}


def training_crops(u8: torch.Tensor, side: int, train: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 patches [B, C, P, P] -> [B, C, side, side]: in training a random crop of each, a random
    flip and quarter turn (the 8 symmetries of the square), all drawn from ``generator`` (exact
    resume); otherwise the centre crop."""
    p = u8.shape[-1]
    if not train:
        o = (p - side) // 2
        return u8[:, :, o:o + side, o:o + side]
    r = torch.randint(0, 1 << 30, (len(u8), 4), generator=generator)
    crops = []
    for i in range(len(u8)):
        y, x = int(r[i, 0]) % (p - side + 1), int(r[i, 1]) % (p - side + 1)
        c = u8[i, :, y:y + side, x:x + side]
        c = c.flip(-1) if r[i, 2] % 2 else c
        crops.append(torch.rot90(c, int(r[i, 3]) % 4, (-2, -1)))
    return torch.stack(crops)
