"""Several adapters on one frozen backbone: identical outputs to loading each alone, shared
backbone tensors, and refusal of adapters that cannot share it."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import config_dict, perturb_tuned, seeded_build, tiny_config, volume

from medtune.adapters import load_adapter, save_adapter
from medtune.errors import MedtuneInputError
from medtune.multitask import MultiTaskModel

TASKS = {"brats": ("adapter", 3, 11), "kits": ("lora", 2, 12), "third": ("vpt_deep", 4, 13)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Task -> (adapter folder, output of the trained model on `volume()`)."""
    root = tmp_path_factory.mktemp("tasks")
    out = {}
    x = volume()
    for task, (method, classes, seed) in TASKS.items():
        cfg = tiny_config("vit", method, num_classes=classes)
        model = seeded_build(cfg)  # seed 0: the shared "pre-trained" backbone
        perturb_tuned(model, seed=seed)
        with torch.no_grad():
            ref = model.eval()(x)
        out[task] = (save_adapter(model, root / task, config_dict(cfg)), ref)
    return out


def test_multitask_equals_single_task(folders):
    base = seeded_build(tiny_config("vit", "head"))
    bank = MultiTaskModel.from_adapters({t: f for t, (f, _) in folders.items()}, base=base)
    assert bank.task_names == list(TASKS) and bank.active == "brats"
    x = volume()
    with torch.no_grad():
        method, classes, _ = TASKS["kits"]
        alone = load_adapter(
            folders["kits"][0], seeded_build(tiny_config("vit", method, num_classes=classes))
        )
        assert torch.equal(alone.eval()(x), folders["kits"][1])
        for task, (_, expected) in folders.items():
            assert expected.shape[1] == TASKS[task][1]
            assert torch.equal(bank(x, task=task), expected)
        bank.switch("third")
        assert torch.equal(bank(x), folders["third"][1])
    # one backbone in memory: the frozen tensors are the same objects in every task
    ptrs = set()
    for model in bank.tasks.values():
        blk = model.backbone.model.blocks[0]
        qkv = blk.attn.wrapped.qkv if hasattr(blk.attn, "wrapped") else blk.attn.qkv
        weight = qkv.base_layer.weight if hasattr(qkv, "base_layer") else qkv.weight
        ptrs.add(weight.data_ptr())
    assert len(ptrs) == 1
    assert ptrs == {base.backbone.model.blocks[0].attn.qkv.weight.data_ptr()}
    with pytest.raises(MedtuneInputError, match="unknown task 'nope'; loaded: brats, kits, third"):
        bank.switch("nope")


def test_multitask_refuses_other_backbone_and_whole_models(folders, tmp_path):
    cfg = tiny_config("vit", "adapter")
    other = seeded_build(cfg, seed=9)
    odd = save_adapter(other, tmp_path / "odd", config_dict(cfg))
    bank = MultiTaskModel.from_adapters({"brats": folders["brats"][0]}, base=seeded_build(cfg))
    with pytest.raises(MedtuneInputError, match="backbone weights differ"):
        bank.add_task("odd", odd)
    full_cfg = tiny_config("vit", "full")
    full = save_adapter(seeded_build(full_cfg), tmp_path / "full", config_dict(full_cfg))
    with pytest.raises(MedtuneInputError, match="trains the backbone"):
        bank.add_task("full", full)
    with pytest.raises(MedtuneInputError, match="already loaded"):
        bank.add_task("brats", folders["brats"][0])
    assert bank.task_names == ["brats"]
