"""Published Fashion-MNIST results, read from the benchmark table in the dataset's README.

The Debian package ``dataset-fashion-mnist`` ships the upstream README, whose "Benchmark"
section is a markdown table of submitted results (classifier, preprocessing, test accuracy,
submitter, code link).  These numbers are as reported by their submitters, not re-measured:
they put a run in context, they are not a leaderboard.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

README = Path("/usr/share/doc/dataset-fashion-mnist/README.md.gz")
SOURCE = "fashion-mnist README (Debian dataset-fashion-mnist)"
DEFAULT_PICKS = ("MobileNet", "ResNet18", "2 Conv+pooling", "Human Performance")

_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # [text](url) -> text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_benchmark_table(markdown: str) -> list[dict]:
    """Rows of the table whose header has a "Fashion test accuracy" column.

    Returns ``[{name, preprocessing, acc, submitter, source}]`` in table order; rows whose
    accuracy is not a number are skipped.
    """
    rows: list[dict] = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if "|" in line and "fashion test accuracy" in line.lower():
            header = [c.lower() for c in _cells(line)]
            break
    else:
        return rows
    col = {"name": 0, "pre": 1, "acc": header.index("fashion test accuracy")}
    col["who"] = header.index("submitter") if "submitter" in header else None
    for line in lines[i + 1:]:
        if not line.strip().startswith("|"):
            break  # the table ends at the first non-table line
        cells = _cells(line)
        if len(cells) <= col["acc"] or set(cells[0]) <= set("-: "):
            continue  # the |---|---| separator row, or a short row
        try:
            acc = float(cells[col["acc"]])
        except ValueError:
            continue
        submitter = cells[col["who"]] if col["who"] is not None and len(cells) > col["who"] else ""
        rows.append({
            "name": cells[col["name"]],
            "preprocessing": cells[col["pre"]],
            "acc": acc,
            "submitter": _LINK.sub(r"\1", submitter).strip(),
            "source": SOURCE,
        })
    return rows


def published_fashion_mnist(path: str | Path = README) -> list[dict]:
    """The README's benchmark rows, e.g. MobileNet 0.950, ResNet18 0.949, Human Performance 0.835.

    Returns ``[]`` when the README is not installed (``apt-get install dataset-fashion-mnist``).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return parse_benchmark_table(f.read())
    except (OSError, EOFError):
        return []


def compare_line(acc: float, rows: list[dict], picks: tuple[str, ...] | None = DEFAULT_PICKS,
                 ours: str = "this run") -> str:
    """A short text table: ``acc`` among the picked published rows, best first.

    Every row whose name equals one of ``picks`` is listed (the README has two
    "2 Conv+pooling" entries from different submitters; both are shown, with the submitter).
    ``picks=None`` lists every row.
    """
    chosen = [r for r in rows if picks is None or r.get("name") in picks]
    entries = [(float(r["acc"]), r["name"], r.get("submitter", ""), False) for r in chosen]
    entries.append((float(acc), ours, "", True))
    entries.sort(key=lambda e: -e[0])
    width = max(len(e[1]) for e in entries)
    lines = [f"{'':2}{'model':<{width}}  {'test acc':>8}"]
    for a, name, who, is_ours in entries:
        mark = "->" if is_ours else ""
        extra = f"  ({who})" if who else ""
        lines.append(f"{mark:2}{name:<{width}}  {a:>8.3f}{extra}")
    if chosen:
        lines.append(f"published: {chosen[0].get('source', SOURCE)}; as reported by submitters")
    return "\n".join(lines)
