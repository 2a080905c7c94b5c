"""Number formatting shared by the HTML report and the model card; every helper takes junk.

Run files can hold anything (null, a string, a missing key); each helper returns an em dash
for a value it cannot format rather than raising.
"""
from __future__ import annotations

import math
from typing import Any

DASH = "\u2014"


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v: Any, digits: int = 2) -> str:
    """0.91234 -> '91.23%'."""
    return f"{100 * v:.{digits}f}%" if is_num(v) else DASH


def num(v: Any, digits: int = 4) -> str:
    """A float with ``digits`` significant digits; ints with thousands separators."""
    if not is_num(v):
        return DASH if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}"


def fixed(v: Any, digits: int = 3) -> str:
    """A score with a fixed number of decimals, so a column of them lines up: 0.840, 1.000."""
    return f"{v:.{digits}f}" if is_num(v) else DASH


def count(v: Any) -> str:
    """2236682 -> '2.24 M'; small numbers as they are."""
    if not is_num(v):
        return DASH
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:,.0f}"


def seconds(v: Any) -> str:
    """83.4 -> '1 min 23 s'."""
    if not is_num(v):
        return DASH
    if v < 1:
        return f"{1000 * v:.0f} ms"
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def rate(v: Any) -> str:
    """Images per second."""
    return f"{v:,.0f} img/s" if is_num(v) else DASH


def when(v: Any) -> str:
    """ISO timestamp -> '2025-01-01 12:00 UTC'; anything else as it is."""
    import datetime as dt

    if not isinstance(v, str):
        return DASH if v is None else str(v)
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        return v
    return t.strftime("%Y-%m-%d %H:%M") + (f" {t.tzname()}" if t.tzinfo else "")
