"""Imports every model family so its ``@register_model`` factories are in the registry."""
from . import mobilenetv2  # noqa: F401
