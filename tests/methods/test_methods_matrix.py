"""Every registered method x a tiny backbone of each family: forward + backward, one optimiser
step changes only the method's and decoder's tensors, save then load gives identical outputs;
unsupported combinations fail with a message that says why."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import config_dict

from medtune.artifacts.adapters import frozen_backbone_tensors, load_adapter, save_adapter
from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods import list_methods
from tiny import FAMILIES, FAMILY_OF, seeded_build, tiny_model_config, volume

CASES = [(m, f) for m in list_methods() for f in FAMILIES]


# Methods that need transformer blocks (attention + MLP sub-blocks) cannot run on CNNs;
# prompt tokens cannot join SAM's grid blocks (no token sequence).
TRANSFORMER_ONLY = {"adapter", "adaptformer", "lora", "vpt_shallow", "vpt_deep"}
PROMPTS = {"vpt_shallow", "vpt_deep"}


def _supported(method: str, family: str) -> bool:
    family = FAMILY_OF.get(family, family)
    if family == "cnn":
        return method not in TRANSFORMER_ONLY
    return family != "sam" or method not in PROMPTS


@pytest.mark.parametrize(("method", "family"), CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_method_on_family(method, family, tmp_path):
    cfg = tiny_model_config(family, method)
    if not _supported(method, family):
        with pytest.raises(MedtuneInputError) as err:
            seeded_build(cfg)
        msg = str(err.value)
        assert f"'{method}' does not support {FAMILY_OF.get(family, family)}" in msg
        assert len(msg.split(":", 1)[1]) > 20, "the error must say why"
        return

    model = seeded_build(cfg)
    x = volume()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frozen = set(frozen_backbone_tensors(model))
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    if method not in ("full", "scratch"):
        extras = {f"backbone.{n}" for n in model.backbone.tuned_extra_names()}
        allowed = extras | set(model.inserted_names)
        stray = {n for n in tuned if not n.startswith("decoder.") and n not in allowed}
        assert not stray, f"tuned outside decoder/method: {sorted(stray)[:3]}"
        if method != "head":
            assert model.inserted_names, "the method inserted nothing"

    # forward + backward + one step
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = model(x)
    assert y.shape == (1, 3, 8, 64, 64)
    assert torch.isfinite(y).all()
    loss = y.float().square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for n, g in grads.items() if n.startswith("decoder."))
    if model.inserted_names:
        assert any(grads[n] is not None for n in model.inserted_names)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    opt.step()

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    param_names = {n for n, _ in model.named_parameters()}
    if method not in ("full", "scratch"):
        from medtune.artifacts.adapters import canonical_name

        segments = model.method.wrapper_segments
        frozen_changed = {k for k in changed if canonical_name(k, segments) in frozen}
        assert not frozen_changed, f"frozen tensors changed: {sorted(frozen_changed)[:3]}"
    assert {k for k in changed if k in param_names} <= tuned
    assert any(k.startswith("decoder.") for k in changed)
    if model.inserted_names:
        assert set(model.inserted_names) & changed, "no inserted tensor was updated"

    # save then load onto a fresh model with the same backbone: identical outputs
    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_adapter(model, tmp_path / "ad", config_dict(cfg))
    fresh = seeded_build(cfg).eval()
    trained = model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())
    load_adapter(tmp_path / "ad", fresh)
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)
