"""The native 3D family: MONAI's Swin UNETR encoder + decoder as medtune's `swin_unetr`.

The model equals MONAI's `SwinUNETR` (same tensors, same output); MONAI's self-supervised
checkpoint layout (`model_swinvit.pt`) loads strictly with a report of what was adapted or
resized; options that make no sense for a native 3D family are refused with the reason."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from monai.networks.nets import SwinUNETR

from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.modeling.model import ModelConfig, build_model

FS = 12  # the test preset swin_unetr_test: feature size 12, window 4
CROP = (64, 32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine threads cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(method="head", in_chans=4, pretrained=False, decoder="auto", **backbone) -> ModelConfig:
    data = {
        "backbone": {
            "name": "swin_unetr_test",
            "in_chans": in_chans,
            "img_size": CROP[1],
            "pretrained": pretrained,
            **backbone,
        },
        "decoder": {"name": decoder},
        "method": method,
        "num_classes": 3,
    }
    return from_dict(ModelConfig, data)


def write_model_swinvit(path, in_chans=1, window=7, seed=0, extra=None) -> SwinUNETR:
    """Write a tiny encoder in the layout of MONAI's self-supervised `model_swinvit.pt`
    (`state_dict`, DDP `module.` prefix, MLP `fc1`/`fc2`); returns the MONAI model it holds."""
    torch.manual_seed(seed)
    net = SwinUNETR(in_channels=in_chans, out_channels=2, feature_size=FS, window_size=window)
    sd = {
        "module." + re.sub(r"\.mlp\.linear([12])\.", r".mlp.fc\1.", k[len("swinViT.") :]): v
        for k, v in net.state_dict().items()
        if k.startswith("swinViT.")
    }
    torch.save({"epoch": 7, "state_dict": {**sd, **(extra or {})}}, path)
    return net.eval()


def test_model_is_monais_swin_unetr():
    """Same parameter count and, with MONAI's tensors copied in, the same logits."""
    model = build_model(config("full"), load_weights=False).eval()
    torch.manual_seed(1)
    ref = SwinUNETR(in_channels=4, out_channels=3, feature_size=FS, window_size=4).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    sd = ref.state_dict()
    enc = {k[len("swinViT.") :]: v for k, v in sd.items() if k.startswith("swinViT.")}
    model.backbone.model.load_state_dict(enc, strict=True)
    model.decoder.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith("swinViT.")}, strict=True
    )
    x = torch.randn(1, 4, *CROP)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_feature_info_and_insertion_points():
    bb = build_model(config(), load_weights=False).backbone
    assert [(f.channels, f.stride) for f in bb.feature_info] == [
        (4, 1), (12, 2), (24, 4), (48, 8), (96, 16), (192, 32)
    ]  # fmt: skip
    pts = bb.insertion_points
    assert [(p.channels, p.stride, p.depth_stride, p.stage_end) for p in pts[::2]] == [
        (12, 2, 2, False), (24, 4, 4, False), (48, 8, 8, False), (96, 16, 16, False)
    ]  # fmt: skip
    assert [p.stage_end for p in pts] == [False, True] * 4


def test_model_swinvit_layout_loads_strictly(tmp_path):
    """The file MONAI's own `SwinUNETR.load_from` reads loads into the backbone: every encoder
    tensor is taken, and the features equal MONAI's encoder with those weights."""
    path = tmp_path / "model_swinvit.pt"
    src = write_model_swinvit(path, in_chans=1, window=7)
    check = SwinUNETR(in_channels=1, out_channels=2, feature_size=FS, window_size=7)
    check.load_from(torch.load(path, weights_only=True))  # MONAI accepts the layout
    theirs = src.swinViT.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in check.swinViT.state_dict().items())
    report: list[str] = []
    model = build_model(
        config(in_chans=1, pretrained=str(path), timm_kwargs={"window_size": 7}), report=report
    )
    assert report[0] == f"source: file {path}"
    assert "renamed 32 MLP tensors mlp.fc1/fc2 -> mlp.linear1/linear2 (MONAI's names)" in report
    assert "skipped 8 relative_position_index buffers (the model rebuilds them)" in report
    assert report[-1] == "loaded 118 tensors into swin_unetr_test"
    assert not any("adapted" in r or "resized" in r or "unused" in r for r in report)
    x = torch.randn(1, 1, *CROP)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = src.swinViT(x, normalize=True)
    assert all(torch.equal(a, b) for a, b in zip(ours[1:], theirs))


def test_load_report_lists_adapted_input_conv_and_resized_tables(tmp_path):
    """1-channel, window-7 checkpoint -> 4 channels, window 4: the conv is repeated and
    rescaled (a 4-channel copy of an image embeds as the image did); each 4x4x4 window keeps
    the checkpoint's bias for every relative offset it has."""
    path = tmp_path / "model_swinvit.pt"
    src = write_model_swinvit(path, in_chans=1, window=7)
    report: list[str] = []
    model = build_model(config(pretrained=str(path)), report=report)
    assert (
        "adapted input conv patch_embed.proj.weight from 1 to 4 channels (timm adapt_input_conv)"
        in report
    )
    resized = [r for r in report if r.startswith("resized")]
    assert resized == [
        "resized 8 relative_position_bias_table tensors from window 7^3 to 4x4x4 (central crop): "
        "layers1.0.blocks.0.attn.relative_position_bias_table, ..."
    ]
    img = torch.randn(1, 1, *CROP)
    with torch.no_grad():
        ours = model.backbone.model.patch_embed(img.expand(1, 4, *CROP))
        assert torch.allclose(ours, src.swinViT.patch_embed(img), atol=1e-5)
    attn4 = model.backbone.model.layers2[0].blocks[1].attn
    attn7 = src.swinViT.layers2[0].blocks[1].attn

    def bias(attn, w, offset):
        row = sum((o + w - 1) * (2 * w - 1) ** (2 - i) for i, o in enumerate(offset))
        return attn.relative_position_bias_table[row]

    for offset in itertools.product(range(-3, 4), repeat=3):
        assert torch.equal(bias(attn4, 4, offset), bias(attn7, 7, offset))


def test_whole_swin_unetr_state_dict_loads_its_encoder(tmp_path):
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=4, out_channels=2, feature_size=FS, window_size=4)
    path = tmp_path / "swin_unetr_btcv.pth"
    torch.save(net.state_dict(), path)
    report: list[str] = []
    model = build_model(config(pretrained=str(path)), report=report)
    n_dec = sum(not k.startswith("swinViT.") for k in net.state_dict())
    assert (
        f"took the encoder tensors under 'swinViT.'; {n_dec} other tensors (decoder, heads) are not loaded"
        in report
    )
    got = model.backbone.model.state_dict()
    assert all(
        torch.equal(got[k[8:]], v) for k, v in net.state_dict().items() if k.startswith("swinViT.")
    )


def test_checkpoint_of_another_architecture_is_refused_with_tensor_names(tmp_path):
    path = tmp_path / "model_swinvit.pt"
    torch.manual_seed(0)
    other = SwinUNETR(in_channels=1, out_channels=2, feature_size=24)
    sd = {"module." + k[8:]: v for k, v in other.state_dict().items() if k.startswith("swinViT.")}
    torch.save({"state_dict": sd}, path)
    with pytest.raises(MedtuneInputError, match=r"do not fit swin_unetr_test: .*patch_embed\.proj"):
        build_model(config(in_chans=1, pretrained=str(path)))
    write_model_swinvit(path)
    sd = torch.load(path, weights_only=True)
    del sd["state_dict"]["module.layers3.0.blocks.1.attn.qkv.weight"]
    torch.save(sd, path)
    with pytest.raises(
        MedtuneInputError,
        match=r"1 tensor\(s\) .* missing .*layers3\.0\.blocks\.1\.attn\.qkv\.weight",
    ):
        build_model(config(in_chans=1, pretrained=str(path)))


def test_unused_checkpoint_tensors_are_reported(tmp_path):
    path = tmp_path / "model_swinvit.pt"
    write_model_swinvit(path, extra={"module.norm.weight": torch.ones(8 * FS)})
    report: list[str] = []
    build_model(config(pretrained=str(path)), report=report)
    assert "unused checkpoint tensors (1): norm.weight" in report


def test_weight_sources_that_cannot_hold_swin_unetr_are_refused(tmp_path):
    with pytest.raises(MedtuneInputError, match="no default weights that load offline"):
        build_model(config(pretrained=True))
    with pytest.raises(MedtuneInputError, match="not Swin UNETR weights"):
        build_model(config(pretrained="timm:swin_tiny_patch4_window7_224"))
    with pytest.raises(MedtuneInputError, match="does not exist"):
        build_model(config(pretrained=str(tmp_path / "missing.pt")))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"img_size": 48}, "img_size 48 is not divisible by 32 .*use 32 or 64"),
        ({"timm_kwargs": {"feature_size": 16}}, "feature_size 16 is not a multiple of 12"),
        (
            {"timm_kwargs": {"patch_size": 4}},
            "'patch_size' is not accepted: the Swin UNETR decoder",
        ),
        (
            {"timm_kwargs": {"spatial_dims": 2}},
            "'spatial_dims' is not accepted: this family is native 3D",
        ),
        ({"timm_kwargs": {"norm_name": "batch"}}, "set model.decoder.options.norm_name"),
        ({"timm_kwargs": {"depths": [2, 2, 2]}}, "depths must give 4 positive numbers"),
        ({"timm_kwargs": {"slice_axis": 0}}, "unknown option 'slice_axis'; Swin UNETR options: "),
    ],
)
def test_options_that_do_not_fit_are_refused(override, message):
    with pytest.raises(MedtuneInputError, match=message):
        build_model(config(**override), load_weights=False)


@pytest.mark.parametrize("decoder", ["swin_unet", "upernet", "unet"])
def test_2d_decoders_are_refused_on_a_native_3d_backbone(decoder):
    with pytest.raises(
        MedtuneInputError,
        match=f"decoder {decoder} decodes 2D slices; .*use decoder.name: swin_unetr",
    ):
        build_model(config(decoder=decoder), load_weights=False)


def test_volume_decoder_is_refused_on_a_slice_backbone():
    cfg = from_dict(
        ModelConfig,
        {
            "backbone": {"name": "vit_test", "img_size": 32},
            "decoder": {"name": "swin_unetr"},
            "method": "head",
        },
    )
    with pytest.raises(
        MedtuneInputError, match="decoder swin_unetr decodes the volumes of a native 3D backbone"
    ):
        build_model(cfg, load_weights=False)


def test_volume_sizes_that_do_not_fit_are_refused_with_sizes_that_do():
    model = build_model(config(), load_weights=False)
    with pytest.raises(
        MedtuneInputError, match=r"volume size 48x32x32 is not divisible by 32 .*D 48 -> 32 or 64"
    ):
        model(torch.zeros(1, 4, 48, 32, 32))
    with pytest.raises(
        MedtuneInputError, match=r"crop size \(data.crop_size\) 64x32x40 .*W 40 -> 32 or 64"
    ):
        model.backbone.check_crop((64, 32, 40))
    with pytest.raises(MedtuneInputError, match="expected 4 input channels, found 1"):
        model.backbone(torch.zeros(1, 1, *CROP))


def test_window_with_one_voxel_at_stride_32_is_refused_with_instance_norm():
    model = build_model(config(), load_weights=False)
    for mode in (True, False):
        with pytest.raises(
            MedtuneInputError, match="32x32x32 window leaves one voxel at stride 32"
        ):
            model.train(mode)(torch.zeros(1, 4, 32, 32, 32))


def test_real_size_model_swinvit_loads_into_the_swin_unetr_preset(tmp_path):
    """The released architecture (feature size 48, heads 3-6-12-24, window 7, 1 CT channel):
    every encoder tensor of the file lands in the 4-channel `swin_unetr` backbone."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    from medtune.modeling.backbones import BackboneConfig, create_backbone
    from medtune.modeling.backbones.weights import load_backbone_weights

    torch.manual_seed(0)
    enc = SwinTransformer(1, 48, (7, 7, 7), (2, 2, 2), (2, 2, 2, 2), (3, 6, 12, 24))
    sd = {
        "module." + re.sub(r"\.mlp\.linear([12])\.", r".mlp.fc\1.", k): v
        for k, v in enc.state_dict().items()
    }
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": sd}, path)
    cfg = BackboneConfig(name="swin_unetr", in_chans=4, img_size=96, pretrained=str(path))
    backbone = create_backbone(cfg)
    report = load_backbone_weights(backbone, cfg)
    assert report[1:] == [
        "renamed 32 MLP tensors mlp.fc1/fc2 -> mlp.linear1/linear2 (MONAI's names)",
        "skipped 8 relative_position_index buffers (the model rebuilds them)",
        "adapted input conv patch_embed.proj.weight from 1 to 4 channels (timm adapt_input_conv)",
        "loaded 118 tensors into swin_unetr",
    ]
    got = backbone.model.state_dict()
    for k, v in enc.state_dict().items():
        if k == "patch_embed.proj.weight":
            assert torch.allclose(got[k], v.repeat(1, 4, 1, 1, 1) / 4)
        else:
            assert torch.equal(got[k], v), k
    # MONAI's 8,062,002-parameter encoder, plus 3 more input channels of the 2x2x2 conv
    assert sum(p.numel() for p in backbone.parameters()) == 8_062_002 + 3 * 48 * 8
