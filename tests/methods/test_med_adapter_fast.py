"""The fast Med-Adapter computes the plain formula (tests/methods/med_adapter_reference.py).

Each case builds the fast adapter with random parameters and BatchNorm statistics, loads its
state dict strictly into the reference (same keys and shapes), and compares in fp32, in train
and eval mode: the output, the inter-stage state, the gradients of the input, of the previous
state and of every parameter (relative error <= 1e-5), and the BatchNorm running statistics.
"""

from __future__ import annotations

import re

import pytest
import torch
from med_adapter_reference import RefMedAdapter, ref_inter_stage

from medtune.modeling.methods.med_adapter.layer import STATE_KEY, MedAdapter
from medtune.modeling.methods.med_adapter.method import inter_stage
from medtune.modeling.slicing import SliceContext

TOL = 1e-5

# adapter options; `inter`: (prev_channels, ratio, depth_ratio, fusion, with_prev) or None
CASES = {
    "default": {},
    "kernels-3-5-7": {"kernels": (3, 5, 7)},
    "fourier-only": {"multiscale": False},
    "multiscale-only": {"fourier": False},
    "no-branches": {"multiscale": False, "fourier": False},
    "no-fusion-conv": {"fusion_conv": False},
    "concat-ratio1": {"inter": (8, 1, 1, "concat", True)},
    "concat-ratio2": {"inter": (6, 2, 1, "concat", True)},
    "concat-no-prev": {"inter": (8, 1, 1, "concat", False)},
    "add-ratio2": {"inter": (6, 2, 1, "add", True)},
    "add-no-prev": {"inter": (8, 1, 1, "add", False)},
    "max-ratio1": {"inter": (8, 1, 1, "max", True)},
    "max-no-prev": {"inter": (4, 2, 1, "max", False)},
    "native3d-align": {"inter": (6, 2, 2, "concat", True)},
    "resample-depth": {"depth": 12},
    "batch2": {"batch": 2, "inter": (6, 2, 1, "concat", True)},
}
DIM, HID, TRAIN_DEPTH, SIZE = 24, 8, 8, 4
_PRE_BN_BIAS = re.compile(r"multiscale\.paths\.\d+\.1\.bias")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _build(opts: dict) -> tuple[MedAdapter, RefMedAdapter, dict]:
    torch.manual_seed(0)
    opts = dict(opts)
    batch, depth = opts.pop("batch", 1), opts.pop("depth", TRAIN_DEPTH)
    inter = opts.pop("inter", None)
    fast_inter = ref_inter = None
    if inter is not None:
        prev_c, ratio, depth_ratio, fusion, _ = inter
        fast_inter = inter_stage(HID, prev_c, ratio, depth_ratio, fusion)
        ref_inter = ref_inter_stage(HID, prev_c, ratio, depth_ratio, fusion)
    fast = MedAdapter(DIM, HID, TRAIN_DEPTH, inter_stage=fast_inter, **opts)
    ref = RefMedAdapter(DIM, HID, TRAIN_DEPTH, inter_stage=ref_inter, **opts)
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0.0, 0.5)
        for name, buf in fast.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    ref.load_state_dict(fast.state_dict(), strict=True)
    shapes = {"batch": batch, "depth": depth, "prev": None}
    if inter is not None and inter[4]:
        prev_c, ratio, depth_ratio = inter[:3]
        shapes["prev"] = (batch, depth * depth_ratio, SIZE * ratio, SIZE * ratio, prev_c)
    return fast, ref, shapes


def _run(module, x, prev, batch, depth, ref: bool):
    """Output and state of one forward; the state comes back channels-last."""
    ctx = SliceContext(batch=batch, depth=depth)
    if prev is not None:
        ctx.state[STATE_KEY] = prev.permute(0, 4, 1, 2, 3) if ref else prev
    out = module(x, ctx)
    state = ctx.state.get(STATE_KEY)
    if ref and state is not None:
        state = state.permute(0, 2, 3, 4, 1)
    return out, state


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fast_matches_reference(case, train):
    fast, ref, s = _build(CASES[case])
    fast.train(train)
    ref.train(train)
    b, d = s["batch"], s["depth"]
    x = torch.randn(b * d, SIZE, SIZE, DIM)
    prev = None if s["prev"] is None else torch.randn(*s["prev"])
    results = []
    for module, is_ref in ((fast, False), (ref, True)):
        xi = x.clone().requires_grad_()
        pi = None if prev is None else prev.clone().requires_grad_()
        out, state = _run(module, xi, pi, b, d, is_ref)
        torch.manual_seed(1)
        loss = (out * torch.randn(out.shape)).sum()
        if state is not None:
            loss = loss + (state * torch.randn(state.shape)).sum()
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        results.append((out, state, xi.grad, None if pi is None else pi.grad, grads))
    (out, state, gx, gp, grads), (r_out, r_state, r_gx, r_gp, r_grads) = results
    assert _rel(out, r_out) <= TOL
    assert (state is None) == (r_state is None)
    if state is not None:
        assert state.shape == r_state.shape
        assert _rel(state, r_state) <= TOL
    assert _rel(gx, r_gx) <= TOL
    if gp is not None:
        assert _rel(gp, r_gp) <= TOL
    assert grads.keys() == r_grads.keys()
    scale = float(torch.cat([g.flatten() for g in r_grads.values() if g is not None]).norm())
    for name, g in grads.items():
        assert (g is None) == (r_grads[name] is None), name
        if g is None:
            continue
        if train and _PRE_BN_BIAS.fullmatch(name):
            # a bias just before a train-mode BatchNorm has zero gradient (the batch mean is
            # subtracted): both are rounding noise, small against the gradients' scale
            assert float(g.norm()) <= TOL * scale and float(r_grads[name].norm()) <= TOL * scale
        else:
            assert _rel(g, r_grads[name]) <= TOL, name
    fast_bufs, ref_bufs = dict(fast.named_buffers()), dict(ref.named_buffers())
    assert fast_bufs.keys() == ref_bufs.keys()
    for name, buf in fast_bufs.items():
        if buf.is_floating_point():
            assert _rel(buf, ref_bufs[name]) <= TOL, name
        else:
            assert torch.equal(buf, ref_bufs[name]), name


@pytest.mark.parametrize("case", ["default", "concat-ratio2", "native3d-align", "max-no-prev"])
def test_state_dict_keys_and_shapes_unchanged(case):
    fast, ref, _ = _build(CASES[case])
    got = {k: tuple(v.shape) for k, v in fast.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert got == want
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in ref.parameters())


def test_folded_batchnorm_keeps_the_output():
    # inference BatchNorm folding turns paths[i][2] into Identity and folds it into paths[i][1]
    from medtune.inference.fuse import fuse_conv_bn

    fast, _, s = _build(CASES["default"])
    fast.eval()
    fused, count = fuse_conv_bn(fast)
    assert count == len(fast.multiscale.paths)
    x = torch.randn(s["depth"], SIZE, SIZE, DIM)
    with torch.no_grad():
        want = fast(x, SliceContext(1, s["depth"]))
        got = fused(x, SliceContext(1, s["depth"]))
    assert _rel(got, want) <= TOL


def test_the_comparison_can_fail():
    # a perturbed Fourier bias must be detected, so the tolerances above are meaningful
    fast, ref, s = _build(CASES["default"])
    with torch.no_grad():
        ref.fourier.bias[0, 0, 1] += 1e-2
    x = torch.randn(s["depth"], SIZE, SIZE, DIM)
    out, _ = _run(fast.eval(), x, None, 1, s["depth"], False)
    r_out, _ = _run(ref.eval(), x, None, 1, s["depth"], True)
    assert _rel(out, r_out) > TOL


def test_fixed_mode_still_refuses_other_depths():
    from medtune.core.errors import MedtuneInputError

    fast = MedAdapter(DIM, HID, TRAIN_DEPTH, depth_filter="fixed")
    x = torch.randn(12, SIZE, SIZE, DIM)
    with pytest.raises(MedtuneInputError, match="depth_filter 'fixed'"):
        fast(x, SliceContext(1, 12))
    out = fast(torch.randn(TRAIN_DEPTH, SIZE, SIZE, DIM), SliceContext(1, TRAIN_DEPTH))
    assert out.shape == (TRAIN_DEPTH, SIZE, SIZE, DIM)
