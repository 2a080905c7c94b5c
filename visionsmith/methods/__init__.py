"""Training methods: each an ``nn.Module`` whose ``forward(batch)`` returns a dict with ``loss``.

Registered by decorator (``registry.register_method``) with what they need; ``method_spec(name)``
answers for them."""
from .registry import (
    MethodSpec,
    build_method,
    list_methods,
    method_spec,
    register_method,
    trains_head,
)

__all__ = ["MethodSpec", "build_method", "list_methods", "method_spec", "register_method", "trains_head"]
