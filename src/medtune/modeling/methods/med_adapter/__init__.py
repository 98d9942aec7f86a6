"""Med-Adapter (Med-Tuning, MIDL 2024): config, layers and the method."""

from medtune.modeling.methods.med_adapter.config import MedAdapterConfig
from medtune.modeling.methods.med_adapter.layer import (
    FourierBranch,
    InterStage,
    MedAdapter,
    MultiScaleBranch,
)
from medtune.modeling.methods.med_adapter.method import MedTuning

__all__ = [
    "FourierBranch",
    "InterStage",
    "MedAdapter",
    "MedAdapterConfig",
    "MedTuning",
    "MultiScaleBranch",
]
