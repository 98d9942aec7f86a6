"""Tuning methods: one folder each, one registry line each (importing the folder registers it)."""

from medtune.modeling.methods import (  # noqa: F401  (registration)  # noqa: F401  (registration: the baselines and LoRA)
    adapter,
    adaptformer,
    full,
    head,
    lora,
    med_adapter,
    pro_tuning,
    scratch,
    st_adapter,
    vpt,
)
from medtune.modeling.methods.base import (
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
