"""Med-Adapter details: parameter counts per the spec, the depth filter, inter-stage state."""

from __future__ import annotations

import pytest
import torch

from medtune.modeling.methods.med_adapter.layer import (
    FourierBranch,
    InterStage,
    MedAdapter,
    resample_depth_filter,
)
from medtune.modeling.model import ModelConfig, build_model
from medtune.modeling.params import count_parameters
from medtune.modeling.slicing import SliceContext


def test_vit_adapter_sizes_match_spec():
    a = MedAdapter(768, 128, 128)
    assert sum(p.numel() for p in a.parameters()) == 220_672
    inter = InterStage(128, 128, ratio=1)
    assert sum(p.numel() for p in inter.parameters()) == 49_408


def test_fixed_and_resample_agree_at_training_depth():
    torch.manual_seed(0)
    fixed, res = FourierBranch(16, "fixed"), FourierBranch(16, "resample")
    with torch.no_grad():
        fixed.weight.normal_()
        fixed.bias.normal_()
    res.load_state_dict(fixed.state_dict())
    v = torch.randn(2, 16, 4, 4, 3)  # (B, D, h, w, C)
    assert torch.equal(fixed(v), res(v))


def test_resampled_filter_follows_normalised_frequency():
    filt = torch.arange(8, dtype=torch.float32)  # FFT order: bins 0,1,2,3,-4,-3,-2,-1
    same = resample_depth_filter(filt, 8)
    assert torch.equal(same, filt)
    up = resample_depth_filter(filt, 16)
    # DC stays DC, the frequency 1/8 (bin 1 of 8) is bin 2 of 16
    assert up[0] == filt[0] and up[2] == filt[1] and up[-2] == filt[-1]
    assert up[1] == pytest.approx((filt[0] + filt[1]) / 2)


def test_ones_filter_is_magnitude_of_input_plus_impulse():
    # W = 1, b = 1: iFFT(FFT(v) + 1) = v + delta at the origin
    fb = FourierBranch(4)
    v = torch.rand(1, 4, 3, 3, 1)  # (B, D, h, w, C)
    out = fb(v)
    expected = v.clone()
    expected[:, 0, 0, 0] += 1
    assert torch.allclose(out, expected.abs(), atol=1e-5)


def test_inter_stage_state_flows_to_next_stage():
    ctx = SliceContext(batch=1, depth=4)
    a0 = MedAdapter(32, 8, 4, inter_stage=InterStage(8, 8, 1))
    a1 = MedAdapter(64, 16, 4, inter_stage=InterStage(16, 8, 2))
    x0 = torch.randn(4, 8, 8, 32)
    a0(x0, ctx)
    s0 = ctx.state["med_adapter.prev"]
    assert s0.shape == (1, 4, 8, 8, 8)  # channels-last (B, D, h, w, C')
    a1(torch.randn(4, 4, 4, 64), ctx)
    assert ctx.state["med_adapter.prev"].shape == (1, 4, 4, 4, 16)


@pytest.mark.parametrize(
    "opts",
    [
        {"multiscale": False},
        {"fourier": False},
        {"fusion_conv": False},
        {"inter_stage": False},
        {"inter_stage_fusion": "add"},
        {"inter_stage_fusion": "max"},
        {"stages": [2, 3]},
    ],
)
def test_ablation_knobs_change_what_is_inserted(opts):
    from medtune.modeling.backbones import BackboneConfig

    def build(method):
        cfg = ModelConfig(
            backbone=BackboneConfig(name="swin_test", img_size=64),
            method={"name": "med_adapter", "train_depth": 4, **method},
        )
        return build_model(cfg, load_weights=False).eval()

    model = build(opts)
    with torch.no_grad():
        assert model(torch.randn(1, 4, 4, 64, 64)).shape == (1, 4, 4, 64, 64)
    assert count_parameters(model).inserted < count_parameters(build({})).inserted


def test_unknown_stage_is_clear():
    from medtune.core.errors import MedtuneInputError
    from medtune.modeling.backbones import BackboneConfig

    cfg = ModelConfig(
        backbone=BackboneConfig(name="swin_test", img_size=64),
        method={"name": "med_adapter", "train_depth": 8, "stages": [7]},
    )
    with pytest.raises(MedtuneInputError, match=r"stages \[7\] do not exist"):
        build_model(cfg, load_weights=False)
