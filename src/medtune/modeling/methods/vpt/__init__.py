"""Visual Prompt Tuning (Jia et al., ECCV 2022): `vpt_shallow` and `vpt_deep`."""

from medtune.modeling.methods.vpt.config import VPTConfig
from medtune.modeling.methods.vpt.layer import PromptedWindowAttention, PromptTokens
from medtune.modeling.methods.vpt.method import VisualPromptTuning, VPTDeep, VPTShallow

__all__ = [
    "PromptTokens",
    "PromptedWindowAttention",
    "VPTConfig",
    "VPTDeep",
    "VPTShallow",
    "VisualPromptTuning",
]
