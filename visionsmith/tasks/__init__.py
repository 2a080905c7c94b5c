"""Tasks: head + loss + metrics + postprocess for one kind of output."""
from .classification import ClassificationTask, compute_metrics, confusion_matrix, worst_mistakes

__all__ = ["ClassificationTask", "compute_metrics", "confusion_matrix", "worst_mistakes"]
