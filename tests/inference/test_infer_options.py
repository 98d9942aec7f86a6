"""Inference options: flags reach the sliding window, refusals (exit 2, one line), BatchNorm
folding exact, batching exact, bf16 on the CPU close to fp32."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import brats_props

import medtune.inference.sliding_window as sw
from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.inference.fuse import checked_fuse, fuse_conv_bn
from medtune.inference.options import InferenceOptions, apply_options, auto_sw_batch_size
from medtune.inference.predictor import Predictor
from tiny import seeded_build, tiny_model_config


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so folding changes the weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="module")
def cnn_model():
    model = seeded_build(tiny_model_config("cnn", num_classes=4, in_chans=1)).eval()
    _randomise_bn(model)
    return model


def _predictor(model, window=(8, 32, 32)) -> Predictor:
    return Predictor(model=model, props=brats_props(), window=window, overlap=0.5)


def test_fused_model_matches_unfused(cnn_model):
    fused, count = fuse_conv_bn(cnn_model)
    assert count > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(fused(x), cnn_model(x), atol=1e-5)
    model, note = checked_fuse(cnn_model, x[:1])
    assert model is not cnn_model and "folded" in note
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn_model.modules())  # a copy


def test_sw_batch_size_1_and_4_and_fusing_give_the_same_probs(cnn_model):
    image = torch.randn(1, 12, 40, 40, generator=torch.Generator().manual_seed(2))
    plain = apply_options(_predictor(cnn_model), InferenceOptions(sw_batch_size=1, fuse=False))
    batched = apply_options(_predictor(cnn_model), InferenceOptions(sw_batch_size=4))
    assert plain.model is cnn_model and batched.model is not cnn_model
    ref, got = plain.predict_probs(image), batched.predict_probs(image)
    assert ref.shape == (4, 12, 40, 40)
    assert torch.allclose(ref, got, atol=1e-5)


def test_bf16_on_cpu_labels_mostly_equal_fp32(cnn_model):
    image = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    fp32 = apply_options(_predictor(cnn_model), InferenceOptions(precision="fp32"))
    bf16 = apply_options(_predictor(cnn_model), InferenceOptions(precision="bf16"))
    assert fp32.autocast is None and bf16.autocast == torch.bfloat16
    a = fp32.predict_probs(image).argmax(0)
    b = bf16.predict_probs(image).argmax(0)
    assert (a == b).float().mean() > 0.9


def test_fast_sets_overlap_deeper_window_and_auto_batch(cnn_model):
    p = apply_options(_predictor(cnn_model), InferenceOptions(fast=True))
    assert p.overlap == 0.25 and p.window == (16, 32, 32)
    assert p.sw_batch_size == auto_sw_batch_size((16, 32, 32))
    q = apply_options(_predictor(cnn_model), InferenceOptions(fast=True, overlap=0.1))
    assert q.overlap == 0.1


def test_deeper_window_refused_with_fixed_depth_filter():
    model = seeded_build(tiny_model_config("vit", depth_filter="fixed", num_classes=4, in_chans=1))
    with pytest.raises(MedtuneInputError, match="fixed") as exc:
        apply_options(_predictor(model.eval(), (8, 64, 64)), InferenceOptions(window=(16, 64, 64)))
    assert "--window 16 64 64" in str(exc.value) and "\n" not in str(exc.value)
    p = apply_options(_predictor(model, (8, 64, 64)), InferenceOptions(fast=True))
    assert p.window == (8, 64, 64)  # --fast keeps the depth a fixed filter needs


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--overlap", "1.0"], "--overlap"),
        (["--overlap", "-0.1"], "--overlap"),
        (["--sw-batch-size", "0"], "--sw-batch-size"),
        (["--window", "0", "32", "32"], "--window"),
    ],
)
def test_bad_values_exit_2_one_line(flags, needle, tiny_run, tmp_path, capsys):
    args = ["predict", str(tiny_run), "--input", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_window_smaller_than_backbone_refused(cnn_model):
    with pytest.raises(MedtuneInputError, match="divisible by 32") as exc:
        apply_options(_predictor(cnn_model), InferenceOptions(window=(8, 16, 16)))
    assert str(exc.value).startswith("--window 8 16 16: expected a window the model accepts")
    assert "\n" not in str(exc.value)


def test_flags_reach_the_sliding_window(tiny_run, phantom_data, tmp_path, monkeypatch):
    seen = []
    real = sw.predict_volume

    def spy(model, image, **kw):
        seen.append(kw)
        return real(model, image, **kw)

    monkeypatch.setattr(sw, "predict_volume", spy)
    flags = ["--overlap", "0.3", "--sw-batch-size", "3", "--window", "16", "32", "32"]
    flags += ["--precision", "bf16", "--device", "cpu"]
    code = main(["evaluate", str(tiny_run), "--data", str(phantom_data), "--out", str(tmp_path)])
    assert code == 0 and seen
    assert seen[-1]["sw_batch_size"] == auto_sw_batch_size((8, 32, 32)) == 16  # automatic, CPU
    assert (
        main(
            [
                "evaluate",
                str(tiny_run),
                "--data",
                str(phantom_data),
                "--out",
                str(tmp_path / "b"),
                *flags,
            ]
        )
        == 0
    )
    kw = seen[-1]
    assert kw["overlap"] == 0.3 and kw["sw_batch_size"] == 3
    assert tuple(kw["window"]) == (16, 32, 32) and kw["autocast"] == torch.bfloat16


def test_the_automatic_batch_depends_on_the_device():
    """About 2^19 voxels per call on a GPU, 2^17 on the CPU (caches), within 1..32."""
    assert auto_sw_batch_size((16, 64, 64), "cuda") == 8
    assert auto_sw_batch_size((16, 64, 64), torch.device("cpu")) == 2
    assert auto_sw_batch_size((32, 64, 64)) == 1  # --fast's window on the CPU
    assert auto_sw_batch_size((128, 128, 128), "cuda") == 1  # never 0
    assert auto_sw_batch_size((4, 8, 8), "cuda") == 32  # at most 32
    assert auto_sw_batch_size((16, 64, 64), "mps") == 2  # other devices as the CPU
