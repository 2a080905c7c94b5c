"""The run report and model card, built from a real (tiny) run folder (see conftest.py)."""
from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from visionsmith.report import (compare_line, load_run, parse_benchmark_table, published_fashion_mnist,
                                write_model_card, write_report)
from visionsmith.report.published import README

PNG = "data:image/png;base64,"


def _assert_self_contained(page: str) -> None:
    """Nothing the page loads may come from a network: every src/href is data: or #anchor."""
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert refs, "expected some images and anchors"
    bad = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    assert not bad, bad
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page) and "@import" not in page


def test_full_report(digits_run):
    run_dir, ev = digits_run
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    # loss, val metrics, lr, throughput, confusion, per-class bars, mistakes grid, published bars
    assert page.count(PNG) == 8
    assert f"{100 * ev['acc']:.2f}%" in page  # the headline accuracy
    assert "digits-linear" in page and ">done<" in page
    for name in ev["classes"]:
        assert f"<td>{name}</td>" in page  # per-class table rows
    assert "baseline B" in page  # the published.json table
    assert "0123456789" in page and "visionsmith train recipes/digits-linear.yaml" in page
    assert "incomplete" not in page and "Problems" not in page
    assert not list(run_dir.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_half_written_run_folder_says_what_is_missing(digits_run):
    run_dir, _ = digits_run
    for name in ("eval.json", "eval_worst.npz", "run.json", "published.json"):
        (run_dir / name).unlink()
    metrics = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(metrics + '{"split": "train", "step": 99, "lo')  # killed mid-write
    val_accs = [json.loads(line)["acc"] for line in metrics.splitlines() if '"val"' in line]

    page = write_report(run_dir).read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "This run folder is incomplete" in page
    assert "<code>eval.json</code> is missing" in page and "<code>run.json</code> is missing" in page
    assert "eval_worst.npz</code> is missing" in page
    cut = len(metrics.splitlines()) + 1
    assert f"skipped unreadable line {cut} (the last one: the run was probably stopped" in page
    assert "No test evaluation" in page
    assert f"{100 * max(val_accs):.2f}%" in page and "best val accuracy" in page  # headline falls back
    assert page.count(PNG) == 4  # the training curves are all still there

    card = write_model_card(run_dir).read_text(encoding="utf-8")
    assert "Incomplete run folder" in card and "`eval.json`" in card


def test_empty_and_garbage_run_folders_never_crash(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    for name in ("config.yaml", "run.json", "metrics.jsonl", "eval.json"):
        assert f"<code>{name}</code> is missing" in page
    assert write_model_card(empty).is_file()

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.yaml").write_text("name: [unclosed\n")
    (junk / "run.json").write_text("[1, 2, 3]")
    (junk / "metrics.jsonl").write_text('"a string"\n{"split": "train", "step": "x", "loss": null}\n')
    (junk / "eval.json").write_text(json.dumps({"acc": "high", "confusion": "x", "per_class": 5,
                                                "classes": "abc", "worst": [1, None]}))
    (junk / "eval_worst.npz").write_bytes(b"not a zip")
    (junk / "published.json").write_text('{"name": "x"}')
    page = write_report(junk).read_text()
    assert "Problems reading the run folder" in page
    assert "metrics.jsonl: skipped 1 unreadable line(s): 1" in page  # a JSON string, not an object
    for needle in ("config.yaml: could not be parsed", "run.json: expected a JSON dict", "&#x27;acc&#x27;",
                   "eval_worst.npz: could not be read", "published.json: expected a JSON list"):
        assert needle in page, needle
    assert write_model_card(junk).is_file()


def test_unexpected_values_become_an_error_box_not_a_crash(digits_run):
    run_dir, _ = digits_run
    ev = json.loads((run_dir / "eval.json").read_text())
    ev["per_class"] = {"precision": [0.5], "recall": "oops", "f1": [None], "support": [1]}
    ev["confusion"] = [[1, 2], [3]]  # ragged
    (run_dir / "eval.json").write_text(json.dumps(ev))
    page = write_report(run_dir).read_text()
    assert "Test evaluation" in page and "Run details" in page  # later sections still drawn
    assert "eval.json: &#x27;per_class&#x27; does not have the expected form" in page
    assert "eval.json: &#x27;confusion&#x27; does not have the expected form" in page
    assert page.count(PNG) == 6  # no confusion matrix, no per-class bars; everything else
    assert "Per class" not in page


def test_model_card(digits_run):
    run_dir, ev = digits_run
    card = write_model_card(run_dir).read_text(encoding="utf-8")
    assert card.startswith("# Model card: digits-linear")
    assert f"{100 * ev['acc']:.2f}%" in card and f"{100 * ev['top5']:.2f}%" in card
    assert f"{ev['macro_f1']:.4g}" in card
    assert "| class | precision | recall | F1 | support |" in card
    assert "## Intended use" in card and "## Limitations" in card and "8x8" in card
    assert "visionsmith train recipes/digits-linear.yaml" in card and "0123456789abcdef" in card
    assert "| torch |" in card
    assert "baseline B" in card  # published.json rows are all listed


def test_model_card_limitations_follow_the_dataset(digits_run):
    run_dir, _ = digits_run
    cfg = (run_dir / "config.yaml").read_text().replace("name: digits", "name: fashion_mnist")
    (run_dir / "config.yaml").write_text(cfg)
    card = write_model_card(run_dir).read_text()
    assert "28x28 grayscale" in card and "Not for images of people" in card


def test_report_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


def test_load_run_reads_worst_images(digits_run):
    data = load_run(digits_run[0])
    assert data.worst_images["images"].dtype == np.uint8 and data.worst_images["images"].shape[1:] == (1, 8, 8)
    assert len(data.val) == 4 and data.train and not data.missing and not data.problems


# ---------------------------------------------------------------------------------------------
# published benchmark table

SNIPPET = """## Benchmark
| Classifier | Preprocessing | Fashion test accuracy | MNIST test accuracy | Submitter| Code |
| --- | --- | --- | --- | --- |--- |
|2 Conv+pooling | None | 0.876 | - | [Kashif Rasul](https://twitter.com/krasul) | [:link:](x) |
|MobileNet | augmentation (horizontal flips)| 0.950|- | [@bojone](https://github.com/bojone)| [:link:](y)|
|Human Performance| Crowd-sourced | 0.835 | - | Leo  | - |
|Broken | None | n/a | - | x | - |

Some text after the table | with a pipe.
"""


def test_parse_benchmark_table_snippet(tmp_path):
    rows = parse_benchmark_table(SNIPPET)
    assert [(r["name"], r["acc"]) for r in rows] == [("2 Conv+pooling", 0.876), ("MobileNet", 0.95),
                                                      ("Human Performance", 0.835)]
    assert rows[0]["submitter"] == "Kashif Rasul" and rows[1]["preprocessing"].startswith("augmentation")
    gz = tmp_path / "README.md.gz"
    gz.write_bytes(gzip.compress(SNIPPET.encode()))
    assert len(published_fashion_mnist(gz)) == 3
    assert published_fashion_mnist(tmp_path / "missing.md.gz") == []


@pytest.mark.skipif(not README.is_file(), reason="Debian package dataset-fashion-mnist not installed")
def test_published_fashion_mnist_from_debian_readme():
    rows = published_fashion_mnist()
    acc = {r["name"]: r["acc"] for r in rows}
    assert acc["MobileNet"] == 0.950 and acc["ResNet18"] == 0.949 and acc["Human Performance"] == 0.835
    assert all(r["source"] == "fashion-mnist README (Debian dataset-fashion-mnist)" for r in rows)
    assert len(rows) > 20

    text = compare_line(0.93, rows)
    lines = text.splitlines()
    body = [ln for ln in lines[1:] if ln[2:].split("  ")[0].strip() and not ln.startswith("published")]
    accs = [float(ln.split()[-1]) if "(" not in ln else float(ln.split("(")[0].split()[-1]) for ln in body]
    assert accs == sorted(accs, reverse=True)  # best first
    assert any(ln.startswith("->this run") and "0.930" in ln for ln in lines)
    assert "MobileNet" in text and "ResNet18" in text and "Human Performance" in text
    assert text.count("2 Conv+pooling") == 2  # both submissions of that name


@pytest.mark.skipif(not README.is_file(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_run_falls_back_to_readme_table(digits_run):
    run_dir, _ = digits_run
    (run_dir / "published.json").unlink()
    cfg = (run_dir / "config.yaml").read_text().replace("name: digits", "name: fashion_mnist")
    (run_dir / "config.yaml").write_text(cfg)
    page = write_report(run_dir).read_text()
    assert "fashion-mnist README" in page and "MobileNet" in page and "Human Performance" in page
    assert page.count(PNG) == 8


def test_a_section_that_fails_becomes_an_error_box(digits_run, monkeypatch):
    from visionsmith.report import plots

    def boom(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(plots, "confusion", boom)
    page = write_report(digits_run[0]).read_text()
    assert "This section could not be drawn: RuntimeError: boom" in page
    assert "section &#x27;Test evaluation&#x27; could not be drawn" in page  # listed at the top too
    assert "Most confident mistakes" in page and page.count(PNG) == 6  # the rest is still there
