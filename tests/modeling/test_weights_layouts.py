"""Checkpoints in each pre-training source's own layout (MoCo v3, CLIP, MAE, SAM, DINOv2, timm
CNNs) load strictly into tiny instances of the paper's presets, with a report of every change;
files of another architecture or of another kind are refused in one line."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from weights_helpers import (
    dinov2_release_layout,
    moco_v3_layout,
    open_clip_layout,
    sam_release_layout,
)

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones import BackboneConfig, create_backbone
from medtune.modeling.backbones.weights import load_backbone_weights

TINY = {"embed_dim": 48, "depth": 4, "num_heads": 2}
TINY_VIT = {**TINY, "patch_size": 8}
TINY_SAM = {**TINY_VIT, "depth": 8, "window_size": 4, "global_attn_indexes": (1, 3, 5, 7)}


def _source(timm_name: str, img_size: int | None, **kw) -> torch.nn.Module:
    torch.manual_seed(3)
    if img_size is not None:
        kw["img_size"] = img_size
    return timm.create_model(timm_name, num_classes=0, **kw)


def _load(name: str, path, timm_kwargs=None, in_chans: int = 3, img_size: int = 64):
    cfg = BackboneConfig(
        name=name,
        img_size=img_size,
        in_chans=in_chans,
        pretrained=str(path),
        timm_kwargs=timm_kwargs or {},
    )
    bb = create_backbone(cfg)
    return bb, load_backbone_weights(bb, cfg)


def _same(got: dict, ref: dict, keys: list[str]) -> None:
    for k in keys:
        assert torch.equal(got[k], ref[k]), k


def test_mocov3_release_layout(tmp_path):
    src = _source("vit_base_patch16_224", 128, **TINY_VIT)
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save(moco_v3_layout(src), path)
    bb, report = _load("vit_b16_mocov3", path, TINY_VIT)
    got, ref = bb.model.state_dict(), src.state_dict()
    _same(
        got,
        ref,
        ["cls_token", "blocks.3.attn.qkv.weight", "norm.weight", "patch_embed.proj.weight"],
    )
    assert got["pos_embed"].shape == (1, 1 + 8 * 8, 48)  # class token kept, 16x16 -> 8x8 grid
    assert any(r.startswith("MoCo v3 layout: took the base encoder") for r in report)
    assert any("resized pos_embed" in r for r in report)
    assert any("unused checkpoint tensors" in r and "head.0.weight" in r for r in report)


def test_mocov3_preset_without_file_says_where_the_weights_come_from():
    cfg = BackboneConfig(name="vit_b16_mocov3", img_size=64, pretrained=True, timm_kwargs=TINY_VIT)
    with pytest.raises(MedtuneInputError, match="MoCo v3's released.*local file"):
        load_backbone_weights(create_backbone(cfg), cfg)


def test_open_clip_layout_takes_the_image_tower(tmp_path):
    src = _source("vit_base_patch16_clip_quickgelu_224", 128, **TINY_VIT)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip_layout(src), path)
    bb, report = _load("vit_b16_clip", path, TINY_VIT, in_chans=4)
    got, ref = bb.model.state_dict(), src.state_dict()
    _same(
        got,
        ref,
        ["cls_token", "norm_pre.weight", "blocks.2.attn.qkv.bias", "blocks.1.mlp.fc2.weight"],
    )
    assert torch.allclose(
        got["patch_embed.proj.weight"][:, :3] * 4 / 3, ref["patch_embed.proj.weight"]
    )
    assert any("CLIP layout" in r and "text tower (5 tensors)" in r for r in report)
    assert any("resized pos_embed from (1, 257, 48) to (1, 65, 48)" in r for r in report)
    assert any("unused checkpoint tensors" in r and "head.weight" in r for r in report)  # proj
    assert any("adapted input conv patch_embed.proj.weight from 3 to 4" in r for r in report)


def test_openai_torchscript_clip_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(4, 4)).save(str(path))
    with pytest.raises(MedtuneInputError, match="TorchScript program.*open_clip"):
        _load("vit_b16_clip", path, TINY_VIT)


def test_mae_release_layout(tmp_path):
    src = _source("vit_base_patch16_224", 128, **TINY_VIT)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": src.state_dict()}, path)
    bb, report = _load("vit_b16_mae", path, TINY_VIT)
    _same(bb.model.state_dict(), src.state_dict(), ["cls_token", "blocks.0.norm1.weight"])
    assert bb.num_prefix_tokens == 1
    assert any("resized pos_embed" in r for r in report)


def test_sam_release_layout_drops_neck_and_resizes_positions(tmp_path):
    src = _source("samvit_base_patch16", 128, **TINY_SAM)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam_release_layout(src), path)
    bb, report = _load("vit_b16_sam", path, TINY_SAM)
    got, ref = bb.model.state_dict(), src.state_dict()
    _same(got, ref, ["blocks.2.mlp.fc1.weight", "blocks.0.attn.rel_pos_h"])  # windowed: same table
    assert ref["blocks.1.attn.rel_pos_h"].shape == (31, 24)  # global block, 16x16 grid
    assert got["blocks.1.attn.rel_pos_h"].shape == (15, 24)  # 8x8 grid
    assert got["pos_embed"].shape == (1, 8, 8, 48)
    assert any("took SAM's image encoder" in r and "(2 tensors) are left out" in r for r in report)
    assert any(r.startswith("left out SAM's neck (6 tensors)") for r in report)
    assert any("resized blocks.1.attn.rel_pos_h from (31, 24) to (15, 24)" in r for r in report)


def test_dinov2_release_layout_with_registers_and_patch14_padding(tmp_path):
    src = _source("vit_base_patch14_reg4_dinov2", 140, **TINY)
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(dinov2_release_layout(src), path)
    bb, report = _load("dinov2reg_test", path)
    got, ref = bb.model.state_dict(), src.state_dict()
    _same(got, ref, ["reg_token", "cls_token", "blocks.1.ls1.gamma", "blocks.3.attn.qkv.weight"])
    assert got["pos_embed"].shape == (1, 5 * 5, 48)  # 64 px padded to 70: a 5x5 grid
    assert any("zero-padded to 70x70" in r for r in report)
    assert any("resized pos_embed" in r for r in report)


def test_eva_dinov3_timm_layout(tmp_path):
    src = _source("vit_base_patch16_dinov3", None, **TINY_VIT)
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    bb, report = _load("eva_test", path)
    _same(bb.model.state_dict(), src.state_dict(), ["reg_token", "blocks.3.attn.qkv.weight"])
    assert report[0].startswith("source: file")


@pytest.mark.parametrize("preset", ["resnet_test", "regnet_test"])
def test_timm_cnn_checkpoint_with_classifier(tmp_path, preset):
    from medtune.modeling.backbones import resolve_preset

    p = resolve_preset(preset)
    torch.manual_seed(3)
    src = timm.create_model(p.timm_name, num_classes=10, **p.kwargs)
    path = tmp_path / f"{preset}.pth"
    torch.save(src.state_dict(), path)
    bb, report = _load(preset, path, in_chans=4)
    got, ref = bb.model.state_dict(), src.state_dict()
    conv = bb.input_conv_name() + ".weight"
    assert torch.allclose(got[conv][:, :3] * 4 / 3, ref[conv])
    same = [k for k in got if k != conv]
    _same(got, ref, same)
    classifier = "fc" if preset == "resnet_test" else "head.fc"
    assert any("unused checkpoint tensors" in r and f"{classifier}.weight" in r for r in report)


def test_checkpoint_of_another_architecture_names_the_first_mismatching_tensors(tmp_path):
    torch.manual_seed(3)
    src = timm.create_model("resnet18", num_classes=0, layers=(1, 1, 1, 1))
    torch.save(src.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(MedtuneInputError) as err:
        _load("vit_test", tmp_path / "resnet.pth", in_chans=4)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing from the checkpoint" in msg and "patch_embed.proj.weight" in msg
    assert "the checkpoint has instead: conv1.weight, bn1.weight" in msg
