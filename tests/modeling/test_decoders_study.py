"""The decoders of the paper's decoder study (SETR naive / PUP / MLA, UNETR) size themselves
from the backbone's features, run forward and backward on slices (patch 14 padding included),
and refuse backbones they cannot decode."""

from __future__ import annotations

import pytest
import torch

from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.modeling.model import ModelConfig, build_model

DECODERS = ["setr_naive", "setr_pup", "setr_mla", "unetr"]


def _model(backbone: str, decoder: str, options: dict | None = None):
    torch.manual_seed(0)
    cfg = {
        "backbone": {"name": backbone, "in_chans": 2, "img_size": 64},
        "decoder": {"name": decoder, "options": options or {}},
        "method": {"name": "head"},
        "num_classes": 3,
    }
    return build_model(from_dict(ModelConfig, cfg), load_weights=False)


@pytest.mark.parametrize("backbone", ["vit_test", "dinov2reg_test"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_forward_backward(decoder, backbone):
    model = _model(backbone, decoder, {"feature_size": 8} if decoder == "unetr" else {})
    x = torch.randn(1, 2, 3, 64, 64)
    y = model(x)
    assert y.shape == (1, 3, 3, 64, 64)  # dinov2reg_test: 70 px padded slices, cropped back
    y.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("decoder.")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_decoders_are_sized_from_feature_info():
    pup = _model("vit_test", "setr_pup").decoder  # patch 8: 3 rounds of conv + 2x upsampling
    assert len(pup.stages) == 3 and pup.stages[0][0].in_channels == 48
    mla = _model("vit_test", "setr_mla").decoder  # 4 streams of 48 // 2 channels
    assert len(mla.reduce) == 4 and mla.reduce[0][0].out_channels == 24
    unetr = _model("vit_test", "unetr", {"feature_size": 8}).decoder
    assert unetr.levels == 3 and unetr.skip_features == [1, 2]  # patch 8: 3 upsamplings
    assert _model("dinov2reg_test", "unetr").decoder.skip_features == [0, 1, 2]  # patch 14 ~ 16


def test_unetr_refuses_multi_scale_features():
    with pytest.raises(MedtuneInputError, match="unetr expects single-scale features.*unet"):
        _model("cnn_test", "unetr")
