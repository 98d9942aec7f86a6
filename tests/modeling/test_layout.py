"""Channels-last conv weights (`medtune.modeling.layout`): only the memory layout changes (same
values, state dict, outputs and gradients), frozen convs only while training, and the
automatic setting is on for the CPU only; prediction's fused copy gets them, the model not."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medtune.modeling.layout import channels_last_convs, wants_channels_last
from medtune.training.losses import SegLoss
from tiny import SIZE, SLICES, seeded_build, tiny_model_config, volume


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _is_cl(conv: nn.Conv2d) -> bool:
    return conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_only_frozen_convs_change_layout_and_nothing_else_changes():
    plain = seeded_build(tiny_model_config("cnn", "med_adapter")).double()  # compare the maths
    model = copy.deepcopy(plain)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    count = channels_last_convs(model)
    frozen = [c for c in _convs(model) if not c.weight.requires_grad]
    assert count == len(frozen) > 0
    assert all(_is_cl(c) for c in frozen)
    assert any(not c.weight.is_contiguous() for c in frozen)  # a real change of layout
    assert all(c.weight.is_contiguous() for c in _convs(model) if c.weight.requires_grad)
    assert {n: p for n, p in model.named_parameters()} == params  # the same Parameter objects
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    # a training step: same loss and tuned gradients
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, 3, (1, 1, SLICES, SIZE, SIZE), generator=g)
    grads = []
    for m in (plain, model):
        m.train().zero_grad(set_to_none=True)
        torch.manual_seed(0)
        SegLoss("dice_ce")(m(volume().double()), label).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert sorted(grads[0]) == sorted(grads[1])
    for n in grads[0]:
        assert torch.allclose(grads[1][n], grads[0][n], rtol=1e-9, atol=1e-12), n


def test_the_automatic_setting_is_the_cpu_only():
    assert wants_channels_last(None, "cpu") and not wants_channels_last(None, "cuda")
    assert wants_channels_last(True, "cuda") and not wants_channels_last(False, torch.device("cpu"))


def test_prediction_on_the_cpu_uses_a_channels_last_fused_copy():
    from medtune.inference.fuse import checked_fuse

    model = seeded_build(tiny_model_config("cnn", "med_adapter")).eval()
    x = volume()
    with torch.no_grad():
        ref = model(x)
    fused, note = checked_fuse(model, x, channels_last=True)
    assert fused is not model and note.startswith("folded"), note
    assert all(_is_cl(c) for c in _convs(fused))
    assert any(not c.weight.is_contiguous() for c in _convs(fused))
    assert all(c.weight.is_contiguous() for c in _convs(model))  # the model itself untouched
    with torch.no_grad():
        assert torch.allclose(fused(x), ref, atol=1e-5)
