"""What a task's predictions look like outside the model: files, JSON, HTTP answers, export checks.

One file per task (``classification.py``, ``segmentation.py``, ``detection.py``, ``enhancement.py``, ``generation.py``), registered by
task name in ``base.py``;
``output_for(task, classes)`` is the entry point (see ``base.py``'s docstring)."""
from . import classification, detection, enhancement, generation, segmentation  # noqa: F401  (each registers its task's outputs)
from .base import TaskOutput, Writer, output_for, output_tasks, register_output
from .classification import Prediction
from .detection import BoxPrediction
from .segmentation import MaskPrediction

__all__ = ["BoxPrediction", "MaskPrediction", "Prediction", "TaskOutput", "Writer", "output_for", "output_tasks", "register_output"]
