"""Weight files of every supported format load through timm's code into slice backbones."""

from __future__ import annotations

import pickle
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file
from weights_helpers import microsoft_swin_layout, write_google_npz

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones import BackboneConfig, create_backbone
from medtune.modeling.backbones.weights import efficientnet_lite0_classifier, load_backbone_weights
from medtune.modeling.decoders import DecoderConfig
from medtune.modeling.model import ModelConfig, build_model

VIT_ARCH = dict(patch_size=8, embed_dim=48, depth=8, num_heads=2)
# swin_test takes its weights from this architecture (its preset's source_kwargs): 6 blocks in
# stage 3, window 7, as Swin-T
SWIN_SRC = dict(embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=7)


def _vit_source() -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model("vit_base_patch16_224", num_classes=0, img_size=128, **VIT_ARCH)


def _load(name: str, path, in_chans: int = 4):
    cfg = BackboneConfig(name=name, img_size=64, in_chans=in_chans, pretrained=str(path))
    bb = create_backbone(cfg)
    return bb, load_backbone_weights(bb, cfg)


def test_efficientnet_lite0_package_weights_classify_a_cat():
    from skimage import data

    model = efficientnet_lite0_classifier()
    img = torch.tensor(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model((img - mean) / std).argmax(-1).item()
    assert 281 <= top <= 285  # ImageNet cat classes


def test_efficientnet_lite0_backbone_loads_package_and_adapts_channels():
    cfg = BackboneConfig(name="efficientnet_lite0", img_size=64, in_chans=1, pretrained=True)
    bb = create_backbone(cfg)
    report = load_backbone_weights(bb, cfg)
    ref = efficientnet_lite0_classifier().state_dict()
    got = bb.model.state_dict()
    assert torch.equal(got["blocks.3.0.conv_pw.weight"], ref["blocks.3.0.conv_pw.weight"])
    assert torch.allclose(
        got["conv_stem.weight"][:, 0], ref["conv_stem.weight"].sum(1)
    )  # 3 -> 1 channel: summed
    assert any("adapted input conv conv_stem.weight from 3 to 1" in r for r in report)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_torch_and_safetensors_files(tmp_path, suffix):
    src = _vit_source()
    sd = src.state_dict()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"model": sd}, path)
    else:
        save_file(sd, str(path))
    bb, report = _load("vit_test", path)
    got = bb.model.state_dict()
    assert torch.equal(got["blocks.5.attn.qkv.weight"], sd["blocks.5.attn.qkv.weight"])
    assert torch.allclose(
        got["patch_embed.proj.weight"][:, :3] * 4 / 3, sd["patch_embed.proj.weight"]
    )
    assert got["pos_embed"].shape == (1, 64, 48)  # 16x16 grid + class token -> 8x8, no class token
    assert any("class token" in r for r in report)
    assert any("resized pos_embed" in r for r in report)


def test_google_vit_npz(tmp_path):
    src = _vit_source()
    path = tmp_path / "ViT-test.npz"
    write_google_npz(src, path)
    bb, report = _load("vit_test", path, in_chans=3)
    got, ref = bb.model.state_dict(), src.state_dict()
    for k in [
        "blocks.2.attn.qkv.weight",
        "blocks.7.mlp.fc2.bias",
        "norm.weight",
        "patch_embed.proj.weight",
    ]:
        assert torch.allclose(got[k], ref[k], atol=1e-6), k
    assert torch.allclose(got["pos_embed"][0, 0], got["pos_embed"][0, 0])  # resampled, finite
    assert any("source: file" in r for r in report)


def _swin_microsoft_file(tmp_path):
    torch.manual_seed(2)
    src = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, **SWIN_SRC)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(microsoft_swin_layout(src), path)
    return src, path


def test_swin_microsoft_layout_with_window_resize(tmp_path):
    src, path = _swin_microsoft_file(tmp_path)
    bb, report = _load("swin_test", path)
    got, ref = bb.model.state_dict(), src.state_dict()
    assert torch.equal(
        got["layers.2.downsample.reduction.weight"], ref["layers.2.downsample.reduction.weight"]
    )
    assert torch.equal(
        got["layers.3.blocks.1.mlp.fc1.weight"], ref["layers.3.blocks.1.mlp.fc1.weight"]
    )
    table = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert ref[table].shape == (13 * 13, 1) and got[table].shape == (3 * 3, 1)
    assert any("resized" in r and "relative_position_bias_table" in r for r in report)
    assert torch.equal(
        got["layers.2.blocks.1.attn.qkv.weight"], ref["layers.2.blocks.1.attn.qkv.weight"]
    )
    assert any(r.startswith("left out checkpoint blocks layers.2.blocks.{2,3,4,5}") for r in report)


def test_swin_unet_decoder_initialised_from_encoder(tmp_path):
    _, path = _swin_microsoft_file(tmp_path)
    cfg = ModelConfig(
        backbone=BackboneConfig(name="swin_test", img_size=64, pretrained=str(path)),
        decoder=DecoderConfig(name="swin_unet"),
        method={"name": "head"},
    )
    report: list[str] = []
    model = build_model(cfg, report=report)
    enc = model.backbone.model.layers[2].blocks[1].attn.qkv.weight
    dec = model.decoder.stages[0].blocks[1].attn.qkv.weight
    assert torch.equal(enc, dec)
    assert any("decoder init" in r for r in report)


def test_swin_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path):
    torch.manual_seed(2)  # stage 3 with 8 blocks: swin_test's weights come from 6
    src = timm.create_model(
        "swin_tiny_patch4_window7_224", num_classes=0, **{**SWIN_SRC, "depths": (2, 2, 8, 2)}
    )
    torch.save(microsoft_swin_layout(src), tmp_path / "swin_other.pth")
    with pytest.raises(
        MedtuneInputError, match=r"swin_other.pth: expected a checkpoint of .*depths=\(2, 2, 6, 2\)"
    ):
        _load("swin_test", tmp_path / "swin_other.pth")


def test_hub_weights_not_cached_with_hf_hub_offline_fail_without_probing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from medtune.modeling.backbones import weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(weights, "_hub_reachable", lambda *a: pytest.fail("probed the hub"))
    cfg = BackboneConfig(
        name="swin_test", img_size=64, pretrained="timm:swin_tiny_patch4_window7_224"
    )
    with pytest.raises(
        MedtuneInputError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE is set"
    ):
        load_backbone_weights(create_backbone(cfg), cfg)


def test_checkpoint_with_missing_or_misshaped_tensors_is_refused(tmp_path):
    sd = _vit_source().state_dict()
    partial = {k: v for k, v in sd.items() if "blocks.7." not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(MedtuneInputError, match="missing from the checkpoint.*blocks.7"):
        _load("vit_test", tmp_path / "partial.pth")
    bad = dict(sd)
    bad["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 48)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(MedtuneInputError, match="do not fit"):
        _load("vit_test", tmp_path / "bad.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    with pytest.raises(MedtuneInputError, match="weights-only"):
        _load("vit_test", path)


def test_missing_file_and_unknown_names_are_clear(tmp_path):
    with pytest.raises(MedtuneInputError, match="does not exist"):
        _load("vit_test", tmp_path / "nope.pth")
    with pytest.raises(MedtuneInputError, match="unknown backbone 'vit_nonsense'.*vit_b16"):
        create_backbone(BackboneConfig(name="vit_nonsense"))
    with pytest.raises(MedtuneInputError, match="no default pre-trained weights"):
        cfg = BackboneConfig(name="vit_test", img_size=64, pretrained=True)
        load_backbone_weights(create_backbone(cfg), cfg)


def test_hub_weights_offline_fail_fast_with_fix():
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable here")
    except OSError:
        pass
    cfg = BackboneConfig(name="vit_b16", img_size=128, pretrained=True)
    with pytest.raises(MedtuneInputError, match="not in the Hugging Face cache.*local"):
        load_backbone_weights(create_backbone(cfg), cfg)
