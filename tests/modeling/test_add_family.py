"""docs/backbones.md's claim: a new family is one file and one `register_family` line. Here the
"file" is the class below (timm's BEiT, which medtune does not ship), and nothing else changes:
its timm names resolve to it, methods run on it, checkpoints load through timm's BEiT filter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import timm
import torch
from torch import nn

from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.modeling import backbones
from medtune.modeling.backbones import BackboneConfig, create_backbone, register_family
from medtune.modeling.backbones.vit import ViTSliceBackbone
from medtune.modeling.backbones.weights import load_backbone_weights
from medtune.modeling.model import ModelConfig, build_model

TINY = {"embed_dim": 48, "depth": 4, "num_heads": 2, "patch_size": 8}


class BeitSliceBackbone(ViTSliceBackbone):
    """timm `Beit` over slices: class token, a relative-position bias given to every block."""

    family = "beit_example"
    timm_modules = ("beit",)
    timm_classes = ("Beit",)
    capabilities = frozenset({"pre_block", "transformer_blocks"})

    @classmethod
    def build_kwargs(cls, timm_name: str) -> dict[str, Any]:
        return {"global_pool": ""}

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        m = self.model
        x = m.patch_embed(x)
        x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = m.pos_drop(x + m.pos_embed if m.pos_embed is not None else x)
        return x, (m.rel_pos_bias() if m.rel_pos_bias is not None else None)

    def run_block(self, blk: nn.Module, x: torch.Tensor, front: int, extra: Any) -> torch.Tensor:
        return blk(x, shared_rel_pos_bias=extra)


@pytest.fixture
def beit_family():
    register_family(BeitSliceBackbone)  # the one registry line
    yield
    backbones.FAMILY_REGISTRY._entries.pop(BeitSliceBackbone.family)
    backbones.FAMILIES.pop("Beit")


def test_unregistered_layout_is_refused():
    with pytest.raises(MedtuneInputError, match="timm class Beit is not a supported layout"):
        create_backbone(BackboneConfig(name="beit_base_patch16_224", img_size=64, timm_kwargs=TINY))


def test_a_family_is_one_file_and_one_registry_line(beit_family, tmp_path):
    torch.manual_seed(0)
    cfg = from_dict(
        ModelConfig,
        {
            "backbone": {
                "name": "beit_base_patch16_224",
                "in_chans": 4,
                "img_size": 64,
                "timm_kwargs": TINY,
            },
            "decoder": {"name": "upernet", "options": {"channels": 16}},
            "method": {"name": "med_adapter", "train_depth": 4},
            "num_classes": 3,
        },
    )
    model = build_model(cfg, load_weights=False)
    assert model.backbone.family == "beit_example" and len(model.backbone.post_block) == 4
    y = model(torch.randn(1, 4, 4, 64, 64))
    assert y.shape == (1, 3, 4, 64, 64)
    y.mean().backward()
    with pytest.raises(MedtuneInputError, match="'vpt_deep' does not support beit_example"):
        build_model(replace(cfg, method={"name": "vpt_deep"}), load_weights=False)
    # checkpoints go through the family's fit_state_dict (timm's BEiT filter, by default)
    src = timm.create_model(
        "beit_base_patch16_224", num_classes=0, img_size=64, global_pool="", **TINY
    )
    torch.save(src.state_dict(), tmp_path / "beit.pth")
    bcfg = BackboneConfig(
        name="beit_base_patch16_224",
        img_size=64,
        in_chans=3,
        pretrained=str(tmp_path / "beit.pth"),
        timm_kwargs=TINY,
    )
    bb = create_backbone(bcfg)
    report = load_backbone_weights(bb, bcfg)
    assert torch.equal(bb.model.blocks[2].attn.qkv.weight, src.blocks[2].attn.qkv.weight)
    assert report[-1].startswith("loaded")
