"""LoRA through peft: only the attention projections of the backbone are adapted, and merging
for deployment gives the unmerged outputs within float tolerance."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import config_dict, perturb_tuned
from peft.tuners.lora import LoraLayer

from medtune.artifacts.adapters import save_adapter
from medtune.core.errors import MedtuneInputError
from tiny import seeded_build, tiny_model_config, volume


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_lora_merge_equals_unmerged(family, tmp_path):
    cfg = tiny_model_config(family, "lora", targets=["qkv", "proj"], r=4, alpha=8)
    model = seeded_build(cfg)
    lora = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert lora and all(n.startswith("backbone.model.") for n in lora)
    assert all(n.endswith((".attn.qkv", ".attn.proj")) for n in lora)
    blocks = 8  # both tiny presets have 8 blocks
    assert len(lora) == 2 * blocks
    assert all(".lora_" in n for n in model.inserted_names)
    perturb_tuned(model)  # lora_B starts at zero: make the update non-trivial
    x = volume()
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        model.method.merge(model)
        merged = model(x)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert not model.inserted_names
    frozen = [p for n, p in model.backbone.model.named_parameters() if "blocks." in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    with pytest.raises(MedtuneInputError, match="merged into the backbone"):
        save_adapter(model, tmp_path / "m", config_dict(cfg))


def test_lora_rejects_unknown_target():
    with pytest.raises(
        MedtuneInputError, match="model.method.targets: expected a list of values among qkv, proj"
    ):
        tiny_model_config("vit", "lora", targets=["fc1"])
