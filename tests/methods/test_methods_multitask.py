"""Several adapters on one frozen backbone: identical outputs to loading each alone, shared
backbone tensors, and refusal of adapters that cannot share it."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import config_dict, perturb_tuned

from medtune.artifacts.adapters import load_adapter, save_adapter
from medtune.artifacts.multitask import MultiTaskModel
from medtune.core.errors import MedtuneInputError
from tiny import seeded_build, tiny_model_config, volume

TASKS = {"brats": ("adapter", 3, 11), "kits": ("lora", 2, 12), "third": ("vpt_deep", 4, 13)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Task -> (adapter folder, output of the trained model on `volume()`)."""
    root = tmp_path_factory.mktemp("tasks")
    out = {}
    x = volume()
    for task, (method, classes, seed) in TASKS.items():
        cfg = tiny_model_config("vit", method, num_classes=classes)
        model = seeded_build(cfg)  # seed 0: the shared "pre-trained" backbone
        perturb_tuned(model, seed=seed)
        with torch.no_grad():
            ref = model.eval()(x)
        out[task] = (save_adapter(model, root / task, config_dict(cfg)), ref)
    return out


def test_multitask_equals_single_task(folders):
    base = seeded_build(tiny_model_config("vit", "head"))
    bank = MultiTaskModel.from_adapters({t: f for t, (f, _) in folders.items()}, base=base)
    assert bank.task_names == list(TASKS) and bank.active == "brats"
    x = volume()
    with torch.no_grad():
        method, classes, _ = TASKS["kits"]
        alone = load_adapter(
            folders["kits"][0], seeded_build(tiny_model_config("vit", method, num_classes=classes))
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
    cfg = tiny_model_config("vit", "adapter")
    other = seeded_build(cfg, seed=9)
    odd = save_adapter(other, tmp_path / "odd", config_dict(cfg))
    bank = MultiTaskModel.from_adapters({"brats": folders["brats"][0]}, base=seeded_build(cfg))
    with pytest.raises(MedtuneInputError, match="backbone weights differ"):
        bank.add_task("odd", odd)
    full_cfg = tiny_model_config("vit", "full")
    full = save_adapter(seeded_build(full_cfg), tmp_path / "full", config_dict(full_cfg))
    with pytest.raises(MedtuneInputError, match="trains the backbone"):
        bank.add_task("full", full)
    with pytest.raises(MedtuneInputError, match="already loaded"):
        bank.add_task("brats", folders["brats"][0])
    assert bank.task_names == ["brats"]


def test_from_saved_configs_with_pretrained_file(tmp_path):
    """Without `base`: the first adapter's config loads the backbone's weight file once; the
    result equals `load_adapter(folder)` alone, which also builds from the saved config."""
    from safetensors.torch import save_file

    from medtune.core.configbase import from_dict
    from medtune.modeling.backbones import BackboneConfig, create_backbone
    from medtune.modeling.model import ModelConfig, build_model

    torch.manual_seed(21)
    weights = tmp_path / "vit_test.safetensors"
    bb = create_backbone(BackboneConfig(name="vit_test", in_chans=4, img_size=64))
    save_file(bb.model.state_dict(), str(weights))
    folders, refs = {}, {}
    x = volume()
    for task, method in (("a", "st_adapter"), ("b", "vpt_shallow")):
        data = config_dict(tiny_model_config("vit", method))
        data["backbone"]["pretrained"] = str(weights)
        cfg = from_dict(ModelConfig, data)
        torch.manual_seed(5)  # other random init: only the weight file makes backbones equal
        model = build_model(cfg, load_weights=True)
        perturb_tuned(model)
        with torch.no_grad():
            refs[task] = model.eval()(x)
        folders[task] = save_adapter(model, tmp_path / task, config_dict(cfg))
    bank = MultiTaskModel.from_adapters(folders)
    with torch.no_grad():
        for task in folders:
            assert torch.equal(load_adapter(folders[task]).eval()(x), refs[task])
            assert torch.equal(bank(x, task=task), refs[task])
