"""Sliding-window inference against whole-volume forward passes of toy models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtune.core.errors import MedtuneInputError
from medtune.inference.sliding_window import predict_volume, probs_to_labels


def pointwise_model(in_ch=2, classes=3, seed=0):
    """A fixed 1x1x1 conv: each voxel's logits depend on that voxel only."""
    torch.manual_seed(seed)
    return torch.nn.Conv3d(in_ch, classes, kernel_size=1)


def full_volume_probs(model, image):
    with torch.no_grad():
        return torch.softmax(model(image[None]), dim=1)[0]


@pytest.fixture
def image():
    torch.manual_seed(1)
    return torch.randn(2, 37, 29, 45)  # larger than the window, not a multiple of it


def test_sliding_window_equals_whole_volume_for_pointwise_model(image):
    model = pointwise_model()
    probs = predict_volume(model, image, window=(16, 16, 16), overlap=2 / 3)
    assert probs.shape == (3, 37, 29, 45)
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert type(probs) is torch.Tensor
    torch.testing.assert_close(probs, full_volume_probs(model, image), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(0), torch.ones(37, 29, 45), atol=1e-5, rtol=0)


def test_flip8_with_pointwise_model_equals_no_tta(image):
    model = pointwise_model()
    plain = predict_volume(model, image, window=(16, 16, 16), overlap=0.5)
    flipped = predict_volume(model, image, window=(16, 16, 16), overlap=0.5, tta="flip8")
    torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)


def test_flip8_flips_back_each_output():
    # An asymmetric 3x3x3 conv is not flip-equivariant; averaging over all 8 flips (each
    # flipped back) makes the prediction of a flipped volume the flipped prediction.
    torch.manual_seed(2)
    model = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
    x = torch.randn(1, 12, 10, 14)
    win = (12, 10, 14)  # one window: no stitching involved
    for dims in [(1,), (2,), (3,), (1, 3)]:
        xf = torch.flip(x, dims)
        tta = predict_volume(model, x, win, tta="flip8")
        tta_f = predict_volume(model, xf, win, tta="flip8")
        torch.testing.assert_close(tta_f, torch.flip(tta, dims), atol=1e-5, rtol=1e-5)
    plain = predict_volume(model, x, win)
    plain_f = predict_volume(model, torch.flip(x, (1,)), win)
    assert not torch.allclose(plain_f, torch.flip(plain, (1,)), atol=1e-4)


def test_volume_smaller_than_window_keeps_input_shape():
    model = pointwise_model()
    x = np.random.default_rng(0).standard_normal((2, 5, 9, 7)).astype(np.float32)
    probs = predict_volume(model, x, window=(16, 16, 16), tta="flip8")
    assert probs.shape == (3, 5, 9, 7)
    torch.testing.assert_close(
        probs, full_volume_probs(model, torch.from_numpy(x)), atol=1e-5, rtol=1e-5
    )


def test_model_mode_restored_and_batched_windows(image):
    model = torch.nn.Sequential(pointwise_model(), torch.nn.Dropout3d(0.9))
    model.train()
    probs = predict_volume(model, image, window=(16, 16, 16), sw_batch_size=4)
    assert model.training  # restored
    # dropout was off during inference, so the result is the deterministic one
    torch.testing.assert_close(probs, full_volume_probs(model.eval(), image), atol=1e-5, rtol=1e-5)


def test_autocast_bfloat16_on_cpu_stays_close_and_float32(image):
    model = pointwise_model()
    probs = predict_volume(model, image, window=(16, 16, 16), autocast=torch.bfloat16)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, full_volume_probs(model, image), atol=3e-2, rtol=0)


def test_probs_to_labels_is_uint8_argmax():
    probs = torch.zeros(3, 2, 2, 2)
    probs[2, 0] = 1.0
    probs[1, 1] = 1.0
    labels = probs_to_labels(probs)
    assert labels.dtype == np.uint8 and labels.shape == (2, 2, 2)
    assert (labels[0] == 2).all() and (labels[1] == 1).all()
    with pytest.raises(MedtuneInputError, match=r"\(K, D, H, W\)"):
        probs_to_labels(probs[0])


def test_input_errors(image):
    model = pointwise_model()
    with pytest.raises(MedtuneInputError, match=r"expected 4 classes, found 3"):
        predict_volume(model, image, (16, 16, 16), num_classes=4)
    with pytest.raises(MedtuneInputError, match="tta: expected one of none, flip8, found 'flip4'"):
        predict_volume(model, image, (16, 16, 16), tta="flip4")
    with pytest.raises(MedtuneInputError, match=r"image: expected \(C, D, H, W\)"):
        predict_volume(model, image[0], (16, 16, 16))
    with pytest.raises(MedtuneInputError, match="window"):
        predict_volume(model, image, (16, 16))
    with pytest.raises(MedtuneInputError, match="overlap"):
        predict_volume(model, image, (16, 16, 16), overlap=1.0)
    with pytest.raises(MedtuneInputError, match="model output"):
        predict_volume(lambda x: x[:, :, ::2], image, (16, 16, 16))
