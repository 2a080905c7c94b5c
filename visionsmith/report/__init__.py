"""Run report (self-contained HTML with plots) and model card, read from a run folder.

The run's task picks the headline, the key numbers, the validation curves and its own sections:
one file per task here (``classification.py``, ``segmentation.py``) registers them with
``sections.register_report``; the common sections are in ``html.py``.

    write_report(run_dir) -> run_dir/report.html
    write_model_card(run_dir) -> run_dir/model_card.md
    published_fashion_mnist() -> the Fashion-MNIST README's benchmark rows
    compare_line(acc, rows) -> a short text table for the CLI
"""
from .html import render_report, write_report
from .model_card import render_model_card, write_model_card
from .published import compare_line, parse_benchmark_table, published_fashion_mnist
from .run_folder import RunData, load_run

__all__ = [
    "RunData",
    "compare_line",
    "load_run",
    "parse_benchmark_table",
    "published_fashion_mnist",
    "render_model_card",
    "render_report",
    "write_model_card",
    "write_report",
]
