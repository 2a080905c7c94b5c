"""Models: a registry of factories that share one backbone interface (see ``_base.py``)."""
from .registry import create_model, get_model_entry, list_models, register_model

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
