"""Frozen BatchNorms folded into their convs for training (`medtune.modeling.frozen_bn`): the
same loss, gradients and trainable statistics as unfolded, state dicts untouched, copies and
pickles keep their own folds, train-mode BatchNorms and mis-paired modules left alone."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medtune.modeling.frozen_bn import (
    FoldedConvForward,
    checked_fold_frozen_batchnorm,
    fold_frozen_batchnorm,
    unfold_frozen_batchnorm,
)
from medtune.training.losses import SegLoss
from tiny import SIZE, SLICES, seeded_build, tiny_model_config, volume


def _label() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 3, (1, 1, SLICES, SIZE, SIZE), generator=g)


def _pretrained_like(model: nn.Module) -> nn.Module:
    """Give every frozen BatchNorm the non-trivial statistics and affine of a trained network
    (fresh ones, mean 0 and variance 1, would make any fold look right)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and not m.weight.requires_grad:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _step(model: nn.Module):
    """One training step's loss, tuned gradients and buffers."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # dropout alike
    x = volume().to(next(model.parameters()).dtype)
    loss = SegLoss("dice_ce")(model(x), _label())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-8))


@pytest.mark.parametrize("family", ["cnn", "resnet", "regnet"])
@pytest.mark.parametrize("method", ["med_adapter", "st_adapter", "pro_tuning", "head"])
def test_a_folded_training_step_equals_the_unfolded_one(family, method):
    plain = _pretrained_like(seeded_build(tiny_model_config(family, method))).double()
    folded = copy.deepcopy(plain)
    keys = {k: v.clone() for k, v in folded.state_dict().items()}
    trial = volume().double()
    count, note = checked_fold_frozen_batchnorm(folded, trial)
    frozen_bns = [
        m
        for m in plain.backbone.modules()
        if isinstance(m, _BatchNorm) and not m.weight.requires_grad
    ]
    assert count == len(frozen_bns) > 0, note  # every frozen backbone BatchNorm has its conv
    assert note.startswith(f"folded {count} frozen BatchNorm(s)")
    after = folded.state_dict()
    assert sorted(after) == sorted(keys)  # no key gained or lost
    assert all(torch.equal(after[k], keys[k]) for k in keys)  # no tensor changed
    loss0, grads0, bufs0 = _step(plain)
    loss1, grads1, bufs1 = _step(folded)
    assert _rel(loss1, loss0) < 1e-10
    assert sorted(grads1) == sorted(grads0) and grads0
    # In float64, so that what is compared is the mathematics, not float32 rounding (which the
    # trainable BatchNorms' batch statistics amplify). Not below 1e-6 of the largest gradient:
    # a bias just before a trainable BatchNorm has a gradient of pure rounding noise.
    scale = max(float(g.abs().max()) for g in grads0.values())
    for n in grads0:
        diff = float((grads1[n] - grads0[n]).abs().max())
        assert diff <= 1e-7 * float(grads0[n].abs().max()) + 1e-9 * scale, n
    for n in bufs0:  # the trainable BatchNorms (adapters, decoder) updated alike
        assert torch.allclose(bufs1[n], bufs0[n], rtol=1e-9, atol=1e-12), n


def test_trainable_batchnorms_are_never_folded():
    model = seeded_build(tiny_model_config("cnn", "full"))  # everything trains
    assert fold_frozen_batchnorm(model) == []
    adapters = seeded_build(tiny_model_config("cnn", "med_adapter"))
    pairs = fold_frozen_batchnorm(adapters)
    assert pairs and all(not bn.weight.requires_grad for _, bn in pairs)
    assert not any(
        isinstance(m.__dict__.get("forward"), FoldedConvForward)
        for m in adapters.backbone.post_block.modules()
    )


def test_a_batchnorm_back_in_train_mode_runs_unfolded():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).requires_grad_(False)
    _pretrained_like(seq)
    x = torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(seq)
    assert len(fold_frozen_batchnorm(seq)) == 1
    seq.eval(), ref.eval()
    assert torch.allclose(seq(x), ref(x), atol=1e-5)
    seq.train(), ref.train()
    assert torch.allclose(seq(x), ref(x), atol=1e-6)  # batch statistics, not the running ones
    assert torch.allclose(seq[1].running_mean, ref[1].running_mean)  # and they updated alike
    assert not torch.equal(seq[1].running_mean, copy.deepcopy(ref)[1].running_mean * 0 + 1)
    assert unfold_frozen_batchnorm(seq) == 1 and "forward" not in seq[0].__dict__


def test_the_fold_follows_the_live_tensors_copies_and_pickles():
    model = _pretrained_like(seeded_build(tiny_model_config("cnn", "med_adapter"))).eval()
    x = volume()
    with torch.no_grad():
        ref = model(x)
    fold_frozen_batchnorm(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.allclose(clone(x), ref, atol=1e-4)
        bn = next(
            m for m in clone.backbone.modules() if isinstance(m, _BatchNorm) and not m.training
        )
        with torch.no_grad():  # a changed statistic (a reloaded checkpoint) is honoured at once
            bn.running_mean.add_(3.0)
            assert not torch.allclose(clone(x), ref, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)  # the original kept its own folds


def test_timm_tf_same_padding_convs_fold():
    """EfficientNet-Lite (the demo's backbone) pads TF-style inside `Conv2dSame.forward`."""
    from timm.layers import BatchNormAct2d
    from timm.layers.conv2d_same import Conv2dSame

    seq = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), BatchNormAct2d(4, act_layer=nn.ReLU6))
    seq.requires_grad_(False).eval()
    _pretrained_like(seq)
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    ref = seq(x)
    count, note = checked_fold_frozen_batchnorm(seq, x.detach())
    assert count == 1, note
    got = seq(x)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    (gx,) = torch.autograd.grad(got.sum(), x)
    unfold_frozen_batchnorm(seq)
    (rx,) = torch.autograd.grad(seq(x).sum(), x)
    assert torch.allclose(gx, rx, atol=1e-5)


class _BatchNormFirst(nn.Module):
    """A conv registered before a BatchNorm that the forward applies first: no fold pair."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_mispaired_module_is_left_unfolded_with_a_note():
    m = _pretrained_like(_BatchNormFirst().requires_grad_(False))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        ref = m.eval()(x)
    count, note = checked_fold_frozen_batchnorm(m.train(), x)
    assert count == 0 and "not folded" in note and "changed the outputs" in note
    assert "forward" not in m.conv.__dict__ and "forward" not in m.bn.__dict__
    assert m.training  # the mode it had
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ref)


def test_inference_fusion_of_a_model_fresh_from_training():
    """`medtune bench` times inference of the model it trained, folds and all: inference's
    own fusion replaces the training folds (no BatchNorm folded twice) and agrees."""
    from medtune.inference.fuse import checked_fuse

    model = _pretrained_like(seeded_build(tiny_model_config("cnn", "med_adapter"))).eval()
    x = volume()
    with torch.no_grad():
        ref = model(x)
    fold_frozen_batchnorm(model)
    fused, note = checked_fuse(model, x)
    assert fused is not model and note.startswith("folded"), note
    assert not any(
        isinstance(m.__dict__.get("forward"), FoldedConvForward) for m in fused.modules()
    )
    with torch.no_grad():
        assert torch.allclose(fused(x), ref, atol=1e-4)
