"""Every family x core method runs forward and backward on a small volume; freezing is exact."""

from __future__ import annotations

import pytest
import torch

from medtune.core.errors import MedtuneInputError
from medtune.modeling.slicing import fold_slices, unfold_slices

FAMILIES = ["vit", "swin", "cnn"]
METHODS = ["full", "head", "scratch", "med_adapter"]


def test_fold_unfold_round_trip():
    x = torch.randn(2, 3, 5, 4, 6)
    s = fold_slices(x)
    assert s.shape == (10, 3, 4, 6)
    assert torch.equal(s[7], x[1, :, 2])  # volume 1, slice 2
    assert torch.equal(unfold_slices(s, 2), x)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_forward_backward(make_model, family, method):
    model = make_model(family, method)
    x = torch.randn(1, 4, 8, 64, 64)
    out = model(x)
    assert out.shape == (1, 3, 8, 64, 64)
    out.float().mean().backward()
    tuned = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert tuned, "nothing trains"
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if p.requires_grad and "decoder" in n
    )
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    if method in ("full", "scratch"):
        assert not frozen
    else:
        assert all(n.startswith("backbone.") for n in frozen)
        assert all(
            not n.startswith("backbone.")
            or n in model.inserted_names
            or "norm" in n
            or "pos_embed" in n
            for n in tuned
        )
    if method == "med_adapter":
        assert model.inserted_names and all(".post_block." in n for n in model.inserted_names)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_weights_bit_identical_after_step(make_model, family):
    model = make_model(family, "med_adapter")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.backbone.model.named_buffers()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(torch.randn(1, 4, 8, 64, 64)).square().mean()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p, before[n]), f"frozen {n} changed"
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert any(n.startswith("decoder.") for n in changed)
    assert any(n in model.inserted_names for n in changed)
    # frozen BatchNorm layers stay in eval mode: running statistics never change
    for n, b in model.backbone.model.named_buffers():
        assert torch.equal(b, buffers[n]), f"frozen buffer {n} changed"


def test_frozen_batchnorm_in_eval_mode_but_full_ft_trains_it(make_model):
    peft = make_model("cnn", "med_adapter")
    peft.train()
    bns = [m for m in peft.backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    adapter_bns = [
        m for m in peft.backbone.post_block.modules() if isinstance(m, torch.nn.BatchNorm3d)
    ]
    assert adapter_bns and all(m.training for m in adapter_bns)
    full = make_model("cnn", "full")
    full.train()
    assert all(
        m.training for m in full.backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_odd_depth_keeps_shape_with_resample(make_model, family):
    model = make_model(family, {"name": "med_adapter", "depth_filter": "resample"}, depth=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 37, 64, 64))
    assert out.shape == (1, 3, 37, 64, 64)


def test_fixed_filter_refuses_other_depth(make_model):
    model = make_model("vit", {"name": "med_adapter", "depth_filter": "fixed"}, depth=8).eval()
    with pytest.raises(MedtuneInputError, match="trained for 8"):
        model(torch.randn(1, 4, 9, 64, 64))


def test_wrong_channels_and_slice_size_are_clear(make_model):
    model = make_model("vit", "head").eval()
    with pytest.raises(MedtuneInputError, match="expected 4 channels, found 1"):
        model(torch.randn(1, 1, 4, 64, 64))
    cnn = make_model("cnn", "head").eval()
    with pytest.raises(MedtuneInputError, match="not divisible by 32"):
        cnn(torch.randn(1, 4, 4, 60, 64))


def test_vit_pads_slices_to_the_patch_and_crops_the_logits_back(make_model):
    model = make_model("vit", "med_adapter").eval()
    x = torch.randn(1, 4, 4, 60, 64)
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 0, 0, 4)))
    assert out.shape == (1, 3, 4, 60, 64)
    # zero padding at the bottom to 64 rows: the same computation, cropped back
    assert torch.allclose(out, padded[..., :60, :], atol=1e-5)


def test_logits_not_softmax(make_model):
    model = make_model("cnn", "head").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 4, 64, 64))
    assert not torch.allclose(out.sum(1), torch.ones(1))


def test_bf16_autocast_runs_fourier_in_float32(make_model):
    model = make_model("vit", "med_adapter").eval()
    seen = []
    fb = model.backbone.post_block["0"].fourier
    orig = torch.fft.fftn

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return orig(x, *a, **k)

    torch.fft.fftn = spy
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(1, 4, 8, 64, 64))
    finally:
        torch.fft.fftn = orig
    assert fb is not None and seen and all(d == torch.float32 for d in seen)
    assert torch.isfinite(out.float()).all()
