"""Sequential bottleneck adapter (Houlsby et al., 2019): config, layers and the method."""

from medtune.methods.adapter.config import AdapterConfig
from medtune.methods.adapter.layer import Bottleneck, ParallelAdapter, SequentialAdapter
from medtune.methods.adapter.method import AdapterTuning

__all__ = ["AdapterConfig", "AdapterTuning", "Bottleneck", "ParallelAdapter", "SequentialAdapter"]
