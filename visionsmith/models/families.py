"""Imports every model family so its ``@register_model`` factories are in the registry.

Each module imports only torch at import time (transformers is imported inside ``hf``'s
functions, timm inside ``timm_model``), so importing them all is cheap and needs no optional extra.
"""
from . import cnn, dinov2, efficientnet_lite, hf, mobilenetv2, resnet, timm_models  # noqa: F401
