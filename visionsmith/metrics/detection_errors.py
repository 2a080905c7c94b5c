"""The worst false positives and misses of a detection split: what went wrong where, for the report.

Used by ``tasks/detection.py``'s ``eval_artifacts`` (``errors.json`` / ``errors.npz``).  Boxes are xyxy
pixels of the split's images; labels index its class list.
"""
from __future__ import annotations

import torch
from torch import Tensor

ERROR_SCORE = 0.3  # a prediction at least this confident is one a user would act on (misses, the report's grid)
ERROR_TOP = 12  # false positives and misses listed
LOOSE_IOU = 0.1  # below this overlap a box is "elsewhere": a background false positive, a miss with no near box
CROP = 96  # side of an error crop in errors.npz, pixels


def to_data_pixels(preds: list[dict], hw: tuple[int, int], s: int) -> list[dict]:
    """Predictions made on ``s x s`` model inputs -> the pixels of the ``hw`` (H, W) images they came from."""
    h, w = hw
    if (h, w) == (s, s):
        return preds
    scale = torch.tensor([w / s, h / s, w / s, h / s])
    return [{**p, "boxes": p["boxes"] * scale.to(p["boxes"])} for p in preds]


def _box(b: Tensor) -> list[float]:
    return [round(float(v), 2) for v in b]


def box_errors(preds: list[dict], boxes: list[Tensor], labels: list[Tensor], classes: list[str],
                top: int = ERROR_TOP, min_score: float = ERROR_SCORE) -> dict:
    """The worst false positives and misses of a split (JSON-ready), from per-image predictions and ground truth.

    A false positive is a prediction with IoU < 0.5 (``MATCH_IOU``) with every ground-truth box of its class
    (duplicates of a found object are not counted: they are NMS's business).  Its kind, from the ground-truth
    box it overlaps most: ``wrong_class`` (IoU >= 0.5 with a box of another class), ``localisation`` (IoU >= 0.1
    with a box of its class), ``wrong_class_and_localisation`` (0.1 <= IoU < 0.5 with another class only),
    ``background`` (IoU < 0.1 with everything).  The ``top`` best-scored are listed, one per place (one
    overlapping a better-scored listed one of its image at IoU >= 0.5 is counted, not listed), with ``best_gt``:
    the ground-truth box of any class it overlaps most (None when it overlaps none).

    A miss is a ground-truth box that no prediction of its class scored >= ``min_score`` overlaps at IoU >= 0.5.
    Its kind and ``prediction`` (the prediction that explains it, or None): ``low_score`` (its class was found
    there, scoring under ``min_score``; the best-scored such prediction), ``wrong_class`` (a confident
    prediction of another class at IoU >= 0.5; the best-overlapping), ``localisation`` (a confident one of its
    class at 0.1 <= IoU < 0.5), ``missed`` (none of those; the prediction of any class and score overlapping
    it most, if any).  The ``top`` largest boxes are listed: a large object missed is the plainest failure.

    Every listed row also has ``window``, the square around it that errors.npz crops (``_window``).  Counts:
    ``n_false_positives`` (all scores) and ``false_positive_kinds`` (of those scored >= ``min_score``);
    ``n_misses`` and ``miss_kinds``."""
    from .detection import MATCH_IOU
    from ..ops.boxes import box_area, box_iou

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    def other(box: Tensor, label: int, **extra) -> dict:
        return {"box": _box(box), "label": label, "class": name(label), **extra}

    # Per image: vectorised IoUs and kinds; only the rows that get listed become dicts (a large split has
    # hundreds of thousands of false positives at any score).
    per, fp_rows, miss_rows = [], [], []  # (score, image, d, kind) and (area, image, g, kind, d)
    for i, (p, gb, gl) in enumerate(zip(preds, boxes, labels)):
        pb, ps, pl = p["boxes"].float().reshape(-1, 4), p["scores"].float(), p["labels"].long()
        gb, gl = gb.float().reshape(-1, 4), gl.long()
        iou = box_iou(pb, gb)  # [D, G]
        same = pl[:, None] == gl[None, :]
        zero = iou.new_zeros(())
        same_iou = torch.where(same, iou, zero).amax(1) if len(gb) else iou.new_zeros(len(pb))
        other_iou = torch.where(~same, iou, zero).amax(1) if len(gb) else iou.new_zeros(len(pb))
        kind = torch.where(other_iou >= MATCH_IOU, 0, torch.where(same_iou >= LOOSE_IOU, 1,
                                                                   torch.where(other_iou >= LOOSE_IOU, 2, 3)))
        per.append((pb, ps, pl, gb, gl, iou, same_iou))
        fp_rows += [(s, i, d, k) for d, s, k in zip(torch.nonzero(same_iou < MATCH_IOU).flatten().tolist(),
                                                      ps[same_iou < MATCH_IOU].tolist(),
                                                      kind[same_iou < MATCH_IOU].tolist())]
        conf = ps >= min_score
        found = (same & conf[:, None] & (iou >= MATCH_IOU)).any(0)
        miss = torch.nonzero(~found).flatten()
        if len(miss):
            c, sm, cm = iou[:, miss], same[:, miss], conf[:, None]
            low, wrong, loc = sm & ~cm & (c >= MATCH_IOU), ~sm & cm & (c >= MATCH_IOU), sm & cm & (c >= LOOSE_IOU)
            k = torch.where(low.any(0), 0, torch.where(wrong.any(0), 1, torch.where(loc.any(0), 2, 3)))
            if len(pb):  # the prediction that explains each miss: see the docstring
                pick = torch.stack([torch.where(low, ps[:, None], -1.0).argmax(0), torch.where(wrong, c, -1.0).argmax(0),
                                    torch.where(loc, c, -1.0).argmax(0),
                                    torch.where(c.amax(0) > 0, c.argmax(0), -1)])
                d = pick.gather(0, k[None]).squeeze(0)
            else:
                d = torch.full_like(k, -1)
            miss_rows += list(zip(box_area(gb[miss]).tolist(), [i] * len(miss), miss.tolist(), k.tolist(), d.tolist()))

    fp_kinds = ("wrong_class", "localisation", "wrong_class_and_localisation", "background")
    miss_kinds = ("low_score", "wrong_class", "localisation", "missed")
    fp_rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    listed: list[dict] = []
    for _, i, d, k in fp_rows:  # one per place: the same spot given several wrong labels would fill the list
        if len(listed) == top:
            break
        pb, ps, pl, gb, gl, iou, same_iou = per[i]
        same_place = [f["box"] for f in listed if f["image"] == i]
        if same_place and box_iou(pb[d:d + 1], torch.tensor(same_place)).max() >= MATCH_IOU:
            continue
        g = int(iou[d].argmax()) if len(gb) else -1
        listed.append({"image": i, "box": _box(pb[d]), "label": int(pl[d]), "class": name(int(pl[d])),
                       "score": round(float(ps[d]), 4), "kind": fp_kinds[k],
                       "same_class_iou": round(float(same_iou[d]), 4),
                       "best_gt": None if g < 0 or iou[d, g] <= 0 else
                       other(gb[g], int(gl[g]), iou=round(float(iou[d, g]), 4))})
    miss_rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    misses = []
    for area, i, g, k, d in miss_rows[:top]:
        pb, ps, pl, gb, gl, iou, _ = per[i]
        misses.append({"image": i, "box": _box(gb[g]), "label": int(gl[g]), "class": name(int(gl[g])),
                       "area": round(area, 2), "kind": miss_kinds[k], "prediction": None if d < 0 else
                       other(pb[d], int(pl[d]), score=round(float(ps[d]), 4), iou=round(float(iou[d, g]), 4))})

    def count(codes: list[int], names: tuple[str, ...]) -> dict:
        return {n: codes.count(c) for c, n in enumerate(names) if codes.count(c)}

    confident = [r[3] for r in fp_rows if r[0] >= min_score]
    for row in listed + misses:
        row["window"] = _window(row)
    return {"match_iou": MATCH_IOU, "min_score": min_score, "n_images": len(preds),
            "n_predictions": sum(len(x[0]) for x in per), "n_ground_truth": sum(len(x[3]) for x in per),
            "n_false_positives": len(fp_rows), "n_false_positives_confident": len(confident),
            "false_positive_kinds": count(confident, fp_kinds), "n_misses": len(miss_rows),
            "miss_kinds": count([r[3] for r in miss_rows], miss_kinds), "false_positives": listed, "misses": misses}


def _window(row: dict) -> list[float]:
    """The square crop window (xyxy image pixels) of an error row: around its box and the box it is compared
    with (``best_gt`` / ``prediction``), with a margin."""
    other = row.get("best_gt") or row.get("prediction")
    b = torch.tensor([row["box"]] + ([other["box"]] if other else []), dtype=torch.float32)
    x1, y1, x2, y2 = float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())
    side = max(max(x2 - x1, y2 - y1) * 1.4 + 6.0, 16.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return [round(v, 2) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)]


def error_crops(images: Tensor, rows: list[dict], size: int = CROP):
    """uint8 ``[n, C, size, size]``: per error row its ``window`` of its image resampled (RoIAlign, averaging
    when it shrinks); outside the image is black."""
    import numpy as np

    from ..ops.boxes import roi_align
    out = np.zeros((len(rows), images.shape[1], size, size), np.uint8)
    for j, r in enumerate(rows):
        crop = roi_align(images[r["image"]][None].float(), torch.tensor([[0.0, *r["window"]]]), size, 1.0,
                         sampling_ratio=0)
        out[j] = crop[0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def error_arrays(errors: dict) -> dict:
    """``errors.json``'s listed rows as arrays for ``errors.npz`` (``fp_*`` and ``miss_*``, one row per crop;
    the compared box's fields are NaN / -1 where there is none), plus its counts."""
    import numpy as np
    out = {}
    for key, rows, other in (("fp", errors["false_positives"], "best_gt"), ("miss", errors["misses"], "prediction")):
        o = [r.get(other) or {} for r in rows]
        out.update({
            f"{key}_image": np.array([r["image"] for r in rows], np.int64),
            f"{key}_box": np.array([r["box"] for r in rows], np.float32).reshape(-1, 4),
            f"{key}_label": np.array([r["label"] for r in rows], np.int64),
            f"{key}_score": np.array([r.get("score", np.nan) for r in rows], np.float32),
            f"{key}_kind": np.array([r["kind"] for r in rows], dtype=str),
            f"{key}_window": np.array([r["window"] for r in rows], np.float32).reshape(-1, 4),
            f"{key}_other_box": np.array([x.get("box", [np.nan] * 4) for x in o], np.float32).reshape(-1, 4),
            f"{key}_other_label": np.array([x.get("label", -1) for x in o], np.int64),
            f"{key}_other_score": np.array([x.get("score", np.nan) for x in o], np.float32),
            f"{key}_other_iou": np.array([x.get("iou", np.nan) for x in o], np.float32)})
    for k in ("n_images", "n_predictions", "n_ground_truth", "n_false_positives", "n_false_positives_confident",
              "n_misses", "min_score", "match_iou"):
        out[k] = np.array(errors[k])
    return out
