"""One epoch of Med-Tuning on a native 3D backbone (tiny Swin UNETR, weights from a file in
MONAI's model_swinvit.pt layout) on the demo's BraTS-like phantoms, on the CPU."""

from __future__ import annotations

import json
import re

import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file

from medtune.artifacts.adapters import load_adapter
from medtune.data.phantoms import write_phantoms
from medtune.modeling.model import build_model
from medtune.training.config import config_from_dict
from medtune.training.run import train_run

CROP = [64, 32, 32]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine threads cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model_swinvit(path) -> None:
    """A 1-channel, window-7, feature-size-12 encoder in MONAI's model_swinvit.pt layout."""
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=7)
    sd = {
        "module." + re.sub(r"\.mlp\.linear([12])\.", r".mlp.fc\1.", k[len("swinViT.") :]): v
        for k, v in net.state_dict().items()
        if k.startswith("swinViT.")
    }
    torch.save({"state_dict": sd}, path)


def test_one_epoch_on_phantoms(tmp_path, capsys):
    root = write_phantoms("brats", 3, tmp_path / "ds", seed=1, shape=(64, 40, 40))
    weights = tmp_path / "model_swinvit.pt"
    _model_swinvit(weights)
    data = {
        "name": "test/swin_unetr_med_adapter",
        "model": {
            "backbone": {
                "name": "swin_unetr_test",
                "in_chans": 4,
                "img_size": CROP[1],
                "pretrained": str(weights),
            },
            "decoder": {"name": "auto"},
            "num_classes": 4,
            "method": {"name": "med_adapter"},
        },
        "data": {
            "root": str(root),
            "crop_size": CROP,
            "batch_size": 1,
            "num_workers": 0,
            "num_folds": 3,
            "foreground_prob": 0.5,
        },
        "train": {
            "max_epochs": 1,
            "warmup_epochs": 0,
            "lr": 0.005,
            "val_every": 1,
            "steps_per_epoch": 2,
            "log_every_n_steps": 1,
            "progress_bar": False,
            "sw_overlap": 0.25,
            "seed": 0,
        },
    }
    cfg = config_from_dict(data)
    assert cfg.model.method["train_depth"] == 64  # the crop depth; stages use 32, 16, 8, 4
    out = tmp_path / "run"
    summary = train_run(cfg, out)
    err = capsys.readouterr().err
    assert "weights: adapted input conv patch_embed.proj.weight from 1 to 4 channels" in err
    assert "weights: resized 8 relative_position_bias_table tensors" in err
    assert summary["epochs"] == 1 and summary["global_step"] == 2
    assert len(summary["train_cases"]) == 2 and len(summary["val_cases"]) == 1
    h = summary["history"][0]
    assert torch.isfinite(torch.tensor(h["train_loss"])) and 0.0 <= h["val_mean_dice"] <= 1.0

    # The adapter holds the adapters and the decoder only, and loads onto the same backbone.
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(k.startswith("backbone.post_block.") for k in tensors)
    assert not any(k.startswith("backbone.model.") for k in tensors)
    conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert conf["model"]["backbone"]["name"] == "swin_unetr_test"
    fresh = build_model(cfg.model, load_weights=True)
    params = dict(fresh.named_parameters())
    assert any(not torch.equal(tensors[n], params[n].detach()) for n in tensors if n in params)
    load_adapter(out / "adapter", fresh)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
