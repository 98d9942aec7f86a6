"""Sequential bottleneck adapter (Houlsby et al., 2019): config, layers and the method."""

from medtune.modeling.methods.adapter.config import AdapterConfig
from medtune.modeling.methods.adapter.layer import Bottleneck, ParallelAdapter, SequentialAdapter
from medtune.modeling.methods.adapter.method import AdapterTuning

__all__ = ["AdapterConfig", "AdapterTuning", "Bottleneck", "ParallelAdapter", "SequentialAdapter"]
