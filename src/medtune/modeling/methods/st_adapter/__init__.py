"""ST-Adapter (Pan et al., NeurIPS 2022) with its temporal conv across slices."""

from medtune.modeling.methods.st_adapter.config import STAdapterConfig
from medtune.modeling.methods.st_adapter.layer import STAdapter
from medtune.modeling.methods.st_adapter.method import STAdapterTuning

__all__ = ["STAdapter", "STAdapterConfig", "STAdapterTuning"]
