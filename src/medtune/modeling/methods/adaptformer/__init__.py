"""AdaptFormer (Chen et al., NeurIPS 2022): config and the method (layers shared with `adapter`)."""

from medtune.modeling.methods.adaptformer.config import AdaptFormerConfig
from medtune.modeling.methods.adaptformer.method import AdaptFormer

__all__ = ["AdaptFormer", "AdaptFormerConfig"]
