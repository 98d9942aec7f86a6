"""The native 3D family (MONAI's Swin UNETR encoder) x every method it supports: forward,
backward, one step changes only the tuned tensors, save then load gives identical outputs; the
other methods refuse with the reason; Med-Adapters mix over each stage's own depth."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import config_dict

from medtune.artifacts.adapters import (
    canonical_name,
    frozen_backbone_tensors,
    load_adapter,
    save_adapter,
)
from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods import list_methods
from medtune.modeling.model import ModelConfig
from tiny import seeded_build

CROP = (64, 32, 32)  # (D, H, W): the smallest crop whose stride-32 grid has 2 voxels
SUPPORTED = ["full", "head", "lora", "med_adapter", "scratch"]
REFUSED = sorted(set(list_methods()) - set(SUPPORTED))


def config(method: str, **options) -> ModelConfig:
    spec = {"name": method, **options}
    if method == "med_adapter":
        spec.setdefault("train_depth", CROP[0])
    data = {
        "backbone": {"name": "swin_unetr_test", "in_chans": 4, "img_size": CROP[1]},
        "decoder": {"name": "auto"},
        "method": spec,
        "num_classes": 3,
    }
    return from_dict(ModelConfig, data)


def volume(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, *CROP, generator=g)


def test_refused_methods_list_is_not_empty():
    assert {"adapter", "adaptformer", "st_adapter", "pro_tuning", "vpt_deep"} <= set(REFUSED)


@pytest.mark.parametrize("method", SUPPORTED)
def test_method_on_swin_unetr(method, tmp_path):
    cfg = config(method)
    model = seeded_build(cfg)
    assert not model.backbone.folds_slices
    x = volume()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frozen = set(frozen_backbone_tensors(model))
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    if method in ("full", "scratch"):
        assert tuned == {n for n, _ in model.named_parameters()}
    else:
        stray = {n for n in tuned if not n.startswith("decoder.") and n not in model.inserted_names}
        assert not stray, f"tuned outside decoder/method: {sorted(stray)[:3]}"
        assert bool(model.inserted_names) == (method != "head")
        assert any(n.startswith("backbone.model.layers1.0.blocks.0.") for n in frozen)

    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = model(x)
    assert y.shape == (1, 3, *CROP) and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for n, g in grads.items() if n.startswith("decoder."))
    no_grad = {n for n in model.inserted_names if grads[n] is None}
    # only the weight of stage 0's alignment conv, which meets a zero state (its bias counts)
    assert no_grad <= {"backbone.post_block.1.inter_stage.align.weight"}, sorted(no_grad)
    opt.step()

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {n for n, _ in model.named_parameters()}
    assert {k for k in changed if k in params} <= tuned
    assert any(k.startswith("decoder.") for k in changed)
    if method not in ("full", "scratch"):
        segments = model.method.wrapper_segments
        assert not {k for k in changed if canonical_name(k, segments) in frozen}
    if model.inserted_names:
        assert set(model.inserted_names) & changed

    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_adapter(model, tmp_path / "ad", config_dict(cfg))
    fresh = seeded_build(cfg).eval()
    load_adapter(tmp_path / "ad", fresh)
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)


@pytest.mark.parametrize("method", REFUSED)
def test_slice_methods_refuse_native_3d(method):
    with pytest.raises(MedtuneInputError) as err:
        seeded_build(config(method))
    msg = str(err.value)
    assert f"'{method}' does not support swin_unetr backbones" in msg
    assert "2D backbones run over the slices" in msg and "native 3D" in msg
    assert msg.endswith("methods for it: " + ", ".join(SUPPORTED))


def test_lora_wraps_every_3d_window_attention_qkv():
    model = seeded_build(config("lora"))
    lora_a = [n for n in model.inserted_names if "lora_A" in n]
    assert len(lora_a) == 8  # 4 stages x 2 blocks, `qkv` of each
    assert all(".attn.qkv.lora_A." in n for n in lora_a)


def test_med_adapter_mixes_over_each_stage_depth():
    """Adapters see the stage volume channels-last `(B, D', h, w, C')`; each Fourier filter spans its
    stage's depth (crop depth 64 -> 32, 16, 8, 4); the alignment convs stride (2, 2, 2)."""
    model = seeded_build(config("med_adapter"))
    backbone = model.backbone
    seen = {}
    hooks = [
        backbone.post_block[str(p.index)].multiscale.register_forward_pre_hook(
            lambda mod, args, i=p.index: seen.__setitem__(i, tuple(args[0].shape))
        )
        for p in backbone.insertion_points
    ]
    with torch.no_grad():
        model.eval()(volume())
    for h in hooks:
        h.remove()
    expected_depths = {0: 32, 1: 16, 2: 8, 3: 4}
    for p in backbone.insertion_points:
        adapter = backbone.post_block[str(p.index)]
        d = expected_depths[p.stage]
        hidden = max(8, p.channels // 6)
        assert seen[p.index] == (1, d, d // 2, d // 2, hidden), p
        assert adapter.fourier.weight.shape == (1, 1, d, 1, 1)
        if p.stage_end:
            align = adapter.inter_stage.align
            assert align.stride == (2, 2, 2) and align.kernel_size == (3, 3, 3)
        else:
            assert adapter.inter_stage is None


def test_med_adapter_fourier_filter_resamples_to_other_window_depths():
    model = seeded_build(config("med_adapter")).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 96, 32, 32))  # stage depths 48, 24, 12, 6
    assert y.shape == (1, 3, 96, 32, 32) and torch.isfinite(y).all()
    fixed = seeded_build(config("med_adapter", depth_filter="fixed")).eval()
    with pytest.raises(MedtuneInputError, match="trained for 32"), torch.no_grad():
        fixed(torch.randn(1, 4, 96, 32, 32))


def test_med_adapter_train_depth_must_fit_the_stage_strides():
    with pytest.raises(MedtuneInputError, match="train_depth 40 is not divisible by 16"):
        seeded_build(config("med_adapter", train_depth=40))
