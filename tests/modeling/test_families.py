"""Every family runs its timm model as timm does (features equal timm's `forward_intermediates`
when no method is inserted), keeps prefix tokens out of the inserted modules, and refuses
layouts, names and slice sizes it cannot run with one line that says what would work."""

from __future__ import annotations

import pytest
import torch
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones import BackboneConfig, create_backbone
from medtune.modeling.backbones.eva import pad_rope

TINY_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 2, "patch_size": 8}
# (name, timm kwargs, ViT-like: the last feature is normalised)
CASES = [
    ("vit_base_patch16_224", TINY_VIT, True),  # class token
    ("vit_base_patch16_clip_224", TINY_VIT, True),  # pre-norm, class token
    ("dinov2reg_test", {}, True),  # class + 4 register tokens, patch 14 (64 px padded to 70)
    ("eva_test", {}, True),  # DINOv3 layout: rotary position, registers
    ("sam_test", {}, False),  # grid blocks, windowed attention
    ("resnet_test", {}, False),
    ("regnet_test", {}, False),
    ("cnn_test", {}, False),  # EfficientNet
    ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}, False),
    ("mobilenetv3_small_050", {}, False),
]


def _backbone(name: str, kwargs: dict, in_chans: int = 3):
    torch.manual_seed(0)
    cfg = BackboneConfig(name=name, img_size=64, in_chans=in_chans, timm_kwargs=kwargs)
    return create_backbone(cfg).eval()


@pytest.mark.parametrize(("name", "kwargs", "vit_like"), CASES, ids=[c[0] for c in CASES])
def test_features_are_timms_own(name, kwargs, vit_like):
    bb = _backbone(name, kwargs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)
        m = bb.model
        xp = bb.pad_slices(x)
        if vit_like:
            idx = bb.feature_blocks
            ref = m.forward_intermediates(xp, indices=idx, intermediates_only=True)
            ref[-1] = m.forward_intermediates(xp, indices=idx, norm=True, intermediates_only=True)[
                -1
            ]
        elif hasattr(bb, "feature_blocks"):  # SAM: the blocks, without the (dropped) neck
            ref = m.forward_intermediates(xp, indices=bb.feature_blocks, intermediates_only=True)
        else:
            n = len(bb.feature_info)
            ref = m.forward_intermediates(xp, indices=n, intermediates_only=True)
    assert len(ours) == len(ref) == len(bb.feature_info)
    for o, r, fi in zip(ours, ref, bb.feature_info):
        assert o.shape == r.shape
        assert o.shape[1] == fi.channels and o.shape[-1] == -(-xp.shape[-1] // fi.stride)
        assert torch.allclose(o, r, atol=1e-5)


def test_prefix_tokens_stay_out_of_inserted_modules():
    bb = _backbone("dinov2reg_test", {})
    assert bb.num_prefix_tokens == 5
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, grid, ctx):
            seen.append(tuple(grid.shape))
            return grid + 1.0

    bb.post_block["0"] = Spy()
    with torch.no_grad():
        bb(torch.randn(2, 3, 64, 64))
    assert seen == [(2, 5, 5, 48)]  # the 5x5 patch grid only, no class / register tokens


def test_identity_rotation_for_tokens_in_front_of_the_grid():
    rope = torch.randn(16, 2 * 24)  # (L, 2d): sin then cos, d the head dim
    padded = pad_rope(rope, 3)
    x = torch.randn(2, 2, 19, 24)  # (B, heads, 3 + L, head_dim)
    out = apply_rot_embed_cat(x, padded, half=True)
    assert torch.equal(out[:, :, :3], x[:, :, :3])
    assert torch.allclose(out[:, :, 3:], apply_rot_embed_cat(x[:, :, 3:], rope, half=True))


def test_unsupported_layout_names_class_families_and_closest_name():
    cfg = BackboneConfig(
        name="beit_base_patch16_224",
        img_size=64,
        timm_kwargs={"embed_dim": 48, "depth": 2, "num_heads": 2},
    )
    with pytest.raises(MedtuneInputError) as err:
        create_backbone(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert "timm class Beit is not a supported layout" in msg
    for family in (
        "vit (VisionTransformer)",
        "eva (Eva)",
        "sam (VisionTransformerSAM)",
        "cnn (ResNet",
    ):
        assert family in msg
    assert "closest supported name: " in msg


def test_unknown_name_offers_the_closest_supported_name():
    with pytest.raises(MedtuneInputError, match="closest supported name: resnet18"):
        create_backbone(BackboneConfig(name="resnet_18"))


def test_swin_slice_size_that_padding_cannot_fix_lists_sizes_that_work():
    with pytest.raises(MedtuneInputError) as err:
        create_backbone(BackboneConfig(name="swin_test", img_size=96))
    msg = str(err.value)
    assert "slice size 96x96 does not fit its windows (window 2" in msg
    assert msg.endswith("sizes that would work: 32, 64, 128, 192")
    for size in (64, 128):  # the sizes offered build
        create_backbone(BackboneConfig(name="swin_test", img_size=size))


def test_vit_b16_keeps_the_papers_layout():
    with torch.device("meta"):
        bb = create_backbone(BackboneConfig(name="vit_b16", img_size=128))
    assert bb.num_prefix_tokens == 0 and bb.model.cls_token is None
    assert bb.model.pos_embed.shape == (1, 64, 768)


def test_padding_is_said_in_the_build_report_without_weights():
    from medtune.core.configbase import from_dict
    from medtune.modeling.model import ModelConfig, build_model

    cfg = {"backbone": {"name": "dinov2reg_test", "img_size": 64}, "method": {"name": "head"}}
    report: list[str] = []
    build_model(from_dict(ModelConfig, cfg), load_weights=False, report=report)
    assert report == [
        "slices 64x64 are zero-padded to 70x70 (the next multiple of the patch, 14) and the "
        "logits cropped back"
    ]
