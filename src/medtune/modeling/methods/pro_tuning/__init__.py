"""Pro-tuning (Nie et al., 2022): stage-wise prompt blocks on the frozen backbone."""

from medtune.modeling.methods.pro_tuning.config import ProTuningConfig
from medtune.modeling.methods.pro_tuning.layer import PromptBlock, StagePrompt, StashStageInput
from medtune.modeling.methods.pro_tuning.method import ProTuning

__all__ = ["PromptBlock", "ProTuning", "ProTuningConfig", "StagePrompt", "StashStageInput"]
