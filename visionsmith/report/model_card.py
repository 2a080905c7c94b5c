"""``write_model_card(run_dir)``: a markdown model card for a run folder.

Sections follow Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), cut to what a
run folder can back with facts: model, data, training recipe, metrics, intended use and
limitations, how to reproduce, environment.  Intended use and limitations are derived from the
dataset name: the card states what the model was trained on, so a reader can tell where it does
not apply.
"""
from __future__ import annotations

from pathlib import Path

from . import fmt
from .run_folder import RunData, atomic_write, get, headline, load_run

# What we know about each built-in dataset: a description, the intended use and the limits.
DATASETS = {
    "fashion_mnist": {
        "about": "Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70,000 28x28 grayscale photos of "
                 "Zalando fashion products (60k train, 10k test), 10 classes, one centred item per "
                 "image on a plain background.",
        "use": "Classifying single, centred product photos of clothing, shoes and bags into the 10 "
               "Fashion-MNIST categories; a baseline and teaching model for the visionsmith pipeline.",
        "limits": [
            "Trained on 28x28 grayscale images, upscaled to the model input size: colour, texture and "
            "fine detail are not used; real photos must be converted and centred the same way.",
            "Product photos only, one item on a plain background: not for cluttered scenes, "
            "several items per image, or items worn by people.",
            "Not for images of people: it says nothing about a person and must not be used to "
            "infer anything about one.",
            "Shirt, T-shirt/top, pullover and coat are often confused (see the confusion matrix); "
            "do not rely on it to tell them apart.",
            "Any image outside the 10 classes still gets one of the 10 labels, often with high confidence.",
        ],
    },
    "digits": {
        "about": "scikit-learn's 8x8 handwritten digits (UCI optical recognition of handwritten digits): "
                 "1,797 images of the digits 0-9 from 43 writers, 16 grey levels.",
        "use": "Demonstrations and tests of the training pipeline on a tiny real dataset.",
        "limits": [
            "8x8 pixel images with 16 grey levels: not a general OCR model; real scans differ in "
            "resolution, stroke width and layout.",
            "1,797 images from 43 writers: the test split is small, so accuracy has a wide margin of error.",
            "Single, segmented, centred digits only; any other image still gets a digit label.",
        ],
    },
}
GENERIC = {
    "about": "A user-supplied image dataset ({name}).",
    "use": "The task the training images were collected for, on images like them.",
    "limits": [
        "Only as good as the training images: performance on images from another camera, "
        "place, time or population is unknown until measured.",
        "Every input gets one of the training classes, including images of none of them.",
        "Check the per-class table: classes with few test images have unreliable scores.",
    ],
}


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _capital(label: str) -> str:
    """"test accuracy" -> "Test accuracy"; "mIoU" stays "mIoU"."""
    return label[:1].upper() + label[1:] if label[1:2].islower() else label


def _intro(data: RunData, ds_name: str) -> list[str]:
    ev, classes, t = data.eval, data.classes, data.task
    acc, _ = headline(data)
    key = t.headline or ""
    shown = t.metric(key).show(acc) if acc is not None else fmt.DASH
    summary = (f"A `{data.cfg('model.name', 'unknown')}` {t.noun} for {len(classes) or 'an unknown number of'} "
               f"classes, trained with visionsmith on {ds_name}.")
    if str(data.cfg("method")) in ("simclr", "mim"):
        summary = (f"A `{data.cfg('model.name', 'unknown')}` backbone pretrained without labels "
                   f"(`{data.cfg('method')}`) with visionsmith on {ds_name}; its classifier is untrained. Start a "
                   "recipe from it with `model.pretrained=<this run folder>`.")
    if fmt.is_num(ev.get(key)) and data.knn:
        summary += f" kNN {t.headline_label} of its frozen features **{shown}** on {fmt.num(ev.get('n'))} images."
    elif fmt.is_num(ev.get(key)):
        summary += f" {_capital(t.headline_label)} **{shown}** on {fmt.num(ev.get('n'))} images."
    elif acc is not None:
        summary += f" Not evaluated on the test split yet; best validation {t.metric(key).label} {shown}."
    out = [f"# Model card: {data.name}", "", summary, ""]
    if data.missing:
        out += [f"> Incomplete run folder (status: {data.status}): missing "
                + ", ".join(f"`{f}` ({data.files.get(f, 'data')})" for f in data.missing) + ".", ""]
    return out


def _model(data: RunData) -> list[str]:
    c, run, classes = data.cfg, data.run, data.classes
    return ["## Model", "", _table(["", ""], [
        ["architecture", f"`{c('model.name', fmt.DASH)}`"],
        ["initial weights", "pretrained: " + str(c("model.pretrained", fmt.DASH))],
        ["parameters", f"{fmt.num(get(run, 'params.total'))} ({fmt.num(get(run, 'params.trainable'))} trainable)"],
        ["input", f"{c('data.image_size', '?')} x {c('data.image_size', '?')} pixels, "
                  f"{c('model.in_chans', '?')} channel(s)"],
        ["output", f"{len(classes)} {data.task.output}" if classes else data.task.output],
        ["classes", ", ".join(classes) or fmt.DASH],
    ]), ""]


def _data(data: RunData, ds: dict, ds_name: str) -> list[str]:
    c = data.cfg
    return ["## Data", "", ds["about"], "", _table(["", ""], [
        ["dataset", f"`{ds_name}`"],
        ["validation", f"{fmt.pct(c('data.val_fraction'), 0)} of train, held out by seed"],
        ["train limit", fmt.num(c("data.train_limit")) if c("data.train_limit") else "all training images"],
        ["test images", fmt.num(data.eval.get("n"))],
    ]), ""]


def _recipe(data: RunData) -> list[str]:
    c, run = data.cfg, data.run
    aug = c("data.augment", {}) or {}
    return ["## Training recipe", "", _table(["", ""], [
        ["epochs", fmt.num(c("train.epochs"))],
        ["batch size", fmt.num(c("train.batch_size"))],
        ["optimizer", f"{c('train.optimizer', fmt.DASH)}, lr {fmt.num(c('train.lr'))}, "
                      f"weight decay {fmt.num(c('train.weight_decay'))}"],
        ["schedule", f"{c('train.schedule', fmt.DASH)}, warmup {fmt.num(c('train.warmup_epochs'))} epochs"],
        ["label smoothing", fmt.num(c("train.label_smoothing"))],
        ["augmentation", ", ".join(f"{k}={v}" for k, v in aug.items()) if isinstance(aug, dict) and aug else fmt.DASH],
        ["EMA", str(c("train.ema", fmt.DASH))],
        ["seed", str(run.get("seed", c("seed", fmt.DASH)))],
        ["status", data.status],
        ["training time", fmt.seconds(get(run, "timing.train_s"))],
    ]), ""]


def _metrics(data: RunData) -> list[str]:
    ev, t = data.eval, data.task
    out = ["## Metrics", ""]
    if not ev:
        value, _ = headline(data)
        best = (f" Best validation {t.metric(t.headline).label}: {t.metric(t.headline).show(value)}."
                if value is not None and t.headline else "")
        return out + ["No test evaluation in this run folder (`eval.json` is missing)." + best, ""]
    if t.card is not None:  # the task's own: per-class tables, comparisons
        return out + t.card(data)
    rows = [[t.metric(k).label, t.metric(k).show(ev.get(k))] for k in t.test_keys]
    return out + [_table(["metric", "value"], rows + [["test images", fmt.num(ev.get("n"))]]), ""]


def _use(ds: dict) -> list[str]:
    out = ["## Intended use", "", ds["use"], "", "## Limitations", ""]
    out += [f"- {lim}" for lim in ds["limits"]]
    return out + ["- Accuracy is measured on one test split with one seed; expect a spread of a few tenths "
                  "of a percent between seeds.", ""]


def _reproduce(data: RunData) -> list[str]:
    run = data.run
    out = ["## How to reproduce", ""]
    if run.get("command"):
        out += ["```bash", str(run["command"]), "```", ""]
    rev = get(run, "git.rev")
    out += ["with the resolved config `config.yaml` in this run folder"
            + (f", at git revision `{rev}`" + (" (with uncommitted changes)" if get(run, "git.dirty") else "")
               if rev else "") + ".", ""]
    if data.config_text:
        out += ["<details><summary>config.yaml</summary>", "", "```yaml", data.config_text.rstrip(), "```", "",
                "</details>", ""]
    return out


def _environment(data: RunData) -> list[str]:
    env = data.run.get("env") if isinstance(data.run.get("env"), dict) else {}
    table = _table(["", ""], [[k, f"`{v}`"] for k, v in env.items()]) if env else "Not recorded (`run.json` missing)."
    return ["## Environment", "", table, ""]


def render_model_card(data: RunData) -> str:
    """The model card markdown for ``data``; a section that cannot be written says so."""
    ds_name = str(data.cfg("data.name") or "unknown")
    ds = DATASETS.get(ds_name, {**GENERIC, "about": GENERIC["about"].format(name=ds_name)})
    sections = [
        lambda: _intro(data, ds_name), lambda: _model(data), lambda: _data(data, ds, ds_name),
        lambda: _recipe(data), lambda: _metrics(data), lambda: _use(ds), lambda: _reproduce(data),
        lambda: _environment(data),
    ]
    out: list[str] = []
    for section in sections:
        try:
            out += section()
        except Exception as e:  # noqa: BLE001 - a partial card beats none; name what failed
            out += [f"> A section could not be written from this run folder ({type(e).__name__}: {e}).", ""]
    return "\n".join(out)


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``run_dir/model_card.md``; like the report, it never fails on a partial run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    return atomic_write(run_dir / "model_card.md", render_model_card(load_run(run_dir)))
