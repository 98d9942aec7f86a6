"""The paper's presets load pre-trained weights at their real sizes: ViT-B/16 (`vit_b16`) and
Swin-T into the (2, 2, 2, 2) window-4 Swin-UNet encoder (`swin_t_unet`), from random tensors
in the layouts users download (Microsoft's and timm's `.pth`, `.safetensors`, Google's `.npz`,
and timm's Hugging Face hub cache, populated here; nothing touches the network)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from weights_helpers import microsoft_swin_layout, write_google_npz

from medtune.modeling.backbones import BackboneConfig, create_backbone
from medtune.modeling.backbones import weights as weights_mod
from medtune.modeling.backbones.weights import load_backbone_weights
from medtune.modeling.decoders import DecoderConfig
from medtune.modeling.model import ModelConfig, build_model

SWIN_T = "swin_tiny_patch4_window7_224"
SWIN_HUB = "timm/swin_tiny_patch4_window7_224.ms_in1k"
TABLE = "attn.relative_position_bias_table"
# The 8 unused relative-position offsets nearest the centre, (dy, dx) in -1..1: timm's table
# resize keeps them exactly (they are nodes of its interpolation grid).
NEAR = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _near(table: torch.Tensor, window: int) -> torch.Tensor:
    """Rows of a `((2w-1)^2, heads)` table at the offsets `NEAR`."""
    side = 2 * window - 1
    return table[[(dy + window - 1) * side + dx + window - 1 for dy, dx in NEAR]]


@pytest.fixture(scope="module")
def swin_model() -> torch.nn.Module:
    """A Swin-T (timm, depths (2, 2, 6, 2), window 7), random."""
    torch.manual_seed(3)
    return timm.create_model(SWIN_T, num_classes=0)


@pytest.fixture(scope="module")
def swin_t(swin_model) -> dict[str, torch.Tensor]:
    return swin_model.state_dict()


@pytest.fixture(scope="module")
def swin_files(swin_model, swin_t, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("swin")
    model = swin_model
    files = {
        "microsoft": d / "swin_tiny_patch4_window7_224.pth",
        "timm_pth": d / "swin_t_timm.pth",
        "safetensors": d / "swin_t.safetensors",
    }
    torch.save(microsoft_swin_layout(model), files["microsoft"])
    torch.save(swin_t, files["timm_pth"])
    save_file(swin_t, str(files["safetensors"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
def hub_cache(swin_t, tmp_path, monkeypatch) -> str:
    """A Hugging Face cache holding timm's Swin-T weights file, offline, no probe of the hub."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{SWIN_HUB.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    torch.manual_seed(4)
    head = {"head.fc.weight": torch.randn(1000, 768), "head.fc.bias": torch.randn(1000)}
    save_file({**swin_t, **head}, str(repo / "snapshots" / rev / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the environment once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*_a, **_k):
        raise AssertionError("the hub was probed although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(weights_mod, "_hub_reachable", no_network)
    return "timm:swin_tiny_patch4_window7_224.ms_in1k"


def _assert_swin_t_landed(got: dict, src: dict, in_chans: int) -> None:
    """Every tensor of the (2, 2, 2, 2) window-4 encoder holds Swin-T's pre-trained values."""
    for k, v in got.items():
        if k == "patch_embed.proj.weight":
            assert v.shape == (96, in_chans, 4, 4)
            if in_chans == 1:
                assert torch.allclose(v[:, 0], src[k].sum(1))  # timm: summed over RGB
            else:
                assert torch.allclose(v[:, :3] * in_chans / 3, src[k])  # repeated, rescaled
        elif k.endswith(TABLE):
            heads = src[k].shape[1]
            assert src[k].shape == (13 * 13, heads) and v.shape == (7 * 7, heads), k
            assert torch.allclose(_near(v, 4), _near(src[k], 7), atol=1e-5), k
        else:
            assert torch.equal(v, src[k]), k  # same name: stage 3 blocks 0-1 are Swin-T's


def _swin_cfg(source: str, in_chans: int = 4) -> BackboneConfig:
    return BackboneConfig(name="swin_t_unet", img_size=128, in_chans=in_chans, pretrained=source)


@pytest.mark.parametrize("layout", ["microsoft", "timm_pth", "safetensors"])
def test_swin_t_files_load_into_swin_unet_encoder(swin_t, swin_files, layout):
    cfg = _swin_cfg(swin_files[layout])
    bb = create_backbone(cfg)
    report = load_backbone_weights(bb, cfg)
    got = bb.model.state_dict()
    assert [len(layer.blocks) for layer in bb.model.layers] == [2, 2, 2, 2]
    _assert_swin_t_landed(got, swin_t, 4)
    for j in (0, 1):
        p = f"layers.2.blocks.{j}.mlp.fc2.weight"
        assert torch.equal(got[p], swin_t[p])
    assert report[0] == f"source: file {swin_files[layout]}"
    assert any(
        "adapted input conv patch_embed.proj.weight from 3 to 4 channels" in r for r in report
    )
    resized = [r for r in report if r.startswith("resized ")]
    assert len(resized) == 8 and all("from (169," in r and "to (49," in r for r in resized)
    assert "left out checkpoint blocks layers.2.blocks.{2,3,4,5} (52 tensors)" in "\n".join(report)
    assert not any("left out" in r and "layers.2.blocks.{2,3,4,5}" not in r for r in report[:-1])
    if layout == "microsoft":  # its buffers are rebuilt, its ImageNet head unused
        assert any(r.startswith("skipped 17 buffers the model rebuilds") for r in report)
        assert "unused checkpoint tensors (2): head.fc.weight, head.fc.bias" in report
    assert report[-1] == f"loaded {len(got)} tensors into swin_t_unet"


def test_swin_t_from_the_hub_cache_offline(swin_t, hub_cache):
    cfg = BackboneConfig(name="swin_t_unet", img_size=128, in_chans=1, pretrained=True)
    bb = create_backbone(cfg)
    report = load_backbone_weights(bb, cfg)
    _assert_swin_t_landed(bb.model.state_dict(), swin_t, 1)
    assert report[0] == "source: timm hub swin_tiny_patch4_window7_224.ms_in1k"
    assert any("from 3 to 1 channels" in r for r in report)
    assert any(r.startswith("left out checkpoint blocks layers.2.blocks.{2,3,4,5}") for r in report)


def test_swin_unet_decoder_takes_the_pretrained_blocks(swin_t, swin_files):
    cfg = ModelConfig(
        backbone=_swin_cfg(swin_files["microsoft"], in_chans=1),
        decoder=DecoderConfig(name="swin_unet", options={"depth": 2}),
        method={"name": "head"},
        num_classes=3,
    )
    report: list[str] = []
    model = build_model(cfg, report=report)
    # decoder stage-ups 0, 1, 2 run at the resolution of encoder stages 2, 1, 0
    for i, s in enumerate((2, 1, 0)):
        for j in (0, 1):
            dec = model.decoder.stages[i].blocks[j].state_dict()
            for name, v in dec.items():
                src = swin_t[f"layers.{s}.blocks.{j}.{name}"]
                if name.endswith(TABLE):
                    assert torch.allclose(_near(v, 4), _near(src, 7), atol=1e-5)
                else:
                    assert torch.equal(v, src), (i, j, name)
    assert "decoder init: stages.0.blocks.1 <- layers.2.blocks.1" in report


VIT_B = "vit_base_patch16_224"


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
    """A ViT-B/16 with class token (timm layout, 224 px), random, and its files."""
    torch.manual_seed(5)
    model = timm.create_model(VIT_B, num_classes=0)
    sd = model.state_dict()
    d = tmp_path_factory.mktemp("vit")
    files = {"timm_pth": d / "vit_b16.pth", "safetensors": d / "vit_b16.safetensors"}
    torch.save(sd, files["timm_pth"])
    save_file(sd, str(files["safetensors"]))
    files["npz"] = d / "ViT-B_16.npz"
    write_google_npz(model, files["npz"])
    return sd, {k: str(v) for k, v in files.items()}


@pytest.mark.slow  # ~340 MB per file: 5-15 s a layout
@pytest.mark.parametrize("layout", ["timm_pth", "safetensors", "npz"])
def test_vit_b16_files_load(vit_b, layout):
    src, files = vit_b
    cfg = BackboneConfig(name="vit_b16", img_size=128, in_chans=4, pretrained=files[layout])
    bb = create_backbone(cfg)
    report = load_backbone_weights(bb, cfg)
    got = bb.model.state_dict()
    exact = layout != "npz"  # Google's layout is reshaped through numpy: float32 round trips
    for k, v in got.items():
        if k == "pos_embed":  # 14x14 grid + class token -> 8x8 grid, no class token
            assert v.shape == (1, 64, 768)
        elif k == "patch_embed.proj.weight":
            assert torch.allclose(v[:, :3] * 4 / 3, src[k], atol=1e-6)
        elif exact:
            assert torch.equal(v, src[k]), k
        else:
            assert torch.allclose(v, src[k], atol=1e-6), k
    assert "cls_token" not in got
    assert report[0] == f"source: file {files[layout]}"
    assert any("dropped the class token" in r for r in report)
    assert any(r.startswith("resized pos_embed from (1, 197, 768) to (1, 64, 768)") for r in report)
    assert any("from 3 to 4 channels" in r for r in report)
    assert report[-1] == f"loaded {len(got)} tensors into vit_b16"
