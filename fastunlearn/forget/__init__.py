"""Forgetting methods for deep networks: one interface, ``method(model, forget, retain, config)``.

See :mod:`fastunlearn.forget.base` for the interface and the registry.
"""

from .base import (
    ForgetConfig,
    ForgetMethod,
    as_dataset,
    available_methods,
    clone_model,
    get_method,
    iterate,
    make_loader,
    model_device,
    register,
    run_method,
)

__all__ = [
    "ForgetConfig",
    "ForgetMethod",
    "as_dataset",
    "available_methods",
    "clone_model",
    "get_method",
    "iterate",
    "make_loader",
    "model_device",
    "register",
    "run_method",
]
