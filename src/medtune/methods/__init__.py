"""Tuning methods: one folder each, one registry line each (importing the folder registers it)."""

from medtune.methods import full, head, med_adapter, scratch  # noqa: F401  (registration)
from medtune.methods.base import (
    METHODS,
    MethodConfig,
    TuningMethod,
    create_method,
    list_methods,
    register_method,
)

__all__ = [
    "METHODS",
    "MethodConfig",
    "TuningMethod",
    "create_method",
    "list_methods",
    "register_method",
]
