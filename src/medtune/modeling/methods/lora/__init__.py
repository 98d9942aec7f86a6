"""LoRA (Hu et al., ICLR 2022) on the backbone's attention projections, via peft."""

from medtune.modeling.methods.lora.config import LoRAConfig
from medtune.modeling.methods.lora.method import LoRA

__all__ = ["LoRA", "LoRAConfig"]
