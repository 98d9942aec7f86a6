"""LoRA on the attention projections of the frozen backbone, injected by peft."""

from __future__ import annotations

from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.lora.config import LoRAConfig

ADAPTER_NAME = "default"


@register_method("lora")
class LoRA(TuningMethod):
    """`peft.inject_adapter_in_model` wraps every `blocks.*.attn.<target>` Linear of the timm
    model (ViT `blocks.i.attn.qkv`, Swin `layers.s.blocks.j.attn.qkv`; never the decoder) in a
    peft `lora.Linear` (frozen weight under `.base_layer`, `lora_A` / `lora_B`). `merge` folds
    `(alpha/r) B A` into the frozen weights and removes the LoRA layers (deployment only)."""

    config_cls = LoRAConfig
    requires = frozenset({"transformer_blocks"})
    wrapper_segments = ("base_layer",)
    unsupported_reason = (
        "LoRA targets the attention projections (qkv, proj), which a CNN does not have"
    )

    def peft_config(self):
        """The `peft.LoraConfig` this method injects."""
        from peft import LoraConfig

        cfg: LoRAConfig = self.config
        pattern = r".*blocks\.\d+\.attn\.(" + "|".join(cfg.targets) + ")"
        return LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=pattern,
            bias="none",
        )

    def insert(self, model: nn.Module) -> None:
        from peft import inject_adapter_in_model

        timm_model = model.backbone.model
        inject_adapter_in_model(self.peft_config(), timm_model, adapter_name=ADAPTER_NAME)
        if not any(self._lora_layers(model)):
            raise MedtuneInputError(
                f"lora: no attention projection named {list(self.config.targets)} found in {model.backbone.timm_name}"
            )

    @staticmethod
    def _lora_layers(model: nn.Module):
        from peft.tuners.lora import LoraLayer

        for name, mod in model.backbone.model.named_modules():
            if isinstance(mod, LoraLayer):
                yield name, mod

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold each LoRA update into its frozen Linear and put the plain Linear back.

        Afterwards the model has no inserted parameters and cannot be saved as an adapter
        (`model.merged` is True); outputs equal the unmerged model's within float tolerance.
        """
        timm_model = model.backbone.model
        layers = list(self._lora_layers(model))
        for name, layer in layers:
            layer.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            parent = timm_model.get_submodule(parent_name) if parent_name else timm_model
            base = layer.get_base_layer()
            base.weight.requires_grad_(False)
            setattr(parent, child, base)
        model.inserted_names = []
        model.merged = True  # SegModel.merged: adapters can no longer be saved
        return model
