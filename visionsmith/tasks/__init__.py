"""Tasks: the kind of output a model gives -- head, loss, targets, metrics, postprocess.

``get_task(cfg)`` is the entry point; ``base.py`` describes the protocol.  One task per file.
"""
from .base import Metric, Task, batch_to, get_task, register_task, task_class, task_names
from .classification import (
           ClassificationTask,
           compute_metrics,
           confusion_matrix,
           worst_mistakes,
)

__all__ = ["ClassificationTask", "Metric", "Task", "batch_to", "compute_metrics", "confusion_matrix", "get_task",
           "register_task", "task_class", "task_names", "worst_mistakes"]
