"""The shipped Swin UNETR configs (MSD Task09_Spleen, Task02_Heart, Task06_Lung; BraTS) build
with MONAI's SwinUNETR parameter count, and `medtune params` prints them.

MONAI's SwinTransformer cannot be built on the meta device (it calls `.item()`), so models are
built for real: once per distinct model section (Heart and Lung share Spleen's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR

from medtune.cli import main
from medtune.modeling.model import build_model
from medtune.modeling.params import count_parameters
from medtune.training.config import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"
DATASETS = {  # config folder -> (channels, classes, crop)
    "msd/task09_spleen": (1, 2, 96),
    "msd/task02_heart": (1, 2, 96),
    "msd/task06_lung": (1, 2, 96),
    "brats": (4, 4, 128),
}
METHODS = ("full", "head", "lora", "med_adapter")
# Med-Adapters at feature size 48 (C = 48, 96, 192, 384; C' = 8, 16, 32, 64): per adapter
# down + up + multi-scale (16 C' + 34 C') + Fourier 2 L + 1x1x1 fusion, L = 96 / 2, 4, 8, 16
# (crop 96) or 128 / ... (crop 128); per stage end the 3x3x3 alignment conv from C'_prev
# (stage 0: C'/2) and the 2C' -> C' reduction. Summed by hand: 240,280 for crop 96; crop 128
# makes the 8 filters longer by 2 x (16, 16, 8, 8, 4, 4, 2, 2) in total: 240,400.
MED_ADAPTER = {96: 240_280, 128: 240_400}
LORA = 64 * (48 + 96 + 192 + 384)  # r 8 on qkv (C -> 3C): 8 C + 8 x 3C, 2 blocks per stage


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine threads cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _monai_counts(chans: int, classes: int) -> tuple[int, int]:
    """(total, encoder) parameters of MONAI's SwinUNETR(feature_size=48)."""
    net = SwinUNETR(in_channels=chans, out_channels=classes, feature_size=48)
    return sum(p.numel() for p in net.parameters()), sum(
        p.numel() for p in net.swinViT.parameters()
    )


def test_msd_configs_share_one_model_section():
    spleen = {m: load_config(ROOT / "msd/task09_spleen/swin_unetr" / f"{m}.yaml") for m in METHODS}
    for task in ("msd/task02_heart", "msd/task06_lung"):
        for m in METHODS:
            cfg = load_config(ROOT / task / "swin_unetr" / f"{m}.yaml")
            assert cfg.model == spleen[m].model and cfg.data.crop_size == (96, 96, 96)


@pytest.mark.parametrize("dataset", ["msd/task09_spleen", "brats"])
def test_configs_count_like_monai_swin_unetr(dataset):
    chans, classes, crop = DATASETS[dataset]
    total, encoder = _monai_counts(chans, classes)
    expected = {
        "full": (total, total, 0),
        "head": (total, total - encoder, 0),
        "lora": (total + LORA, total - encoder + LORA, LORA),
        "med_adapter": (
            total + MED_ADAPTER[crop],
            total - encoder + MED_ADAPTER[crop],
            MED_ADAPTER[crop],
        ),
    }
    for method in METHODS:
        cfg = load_config(ROOT / dataset / "swin_unetr" / f"{method}.yaml")
        assert cfg.model.method["name"] == method
        assert cfg.data.crop_size == (crop,) * 3 and cfg.model.backbone.in_chans == chans
        c = count_parameters(build_model(cfg.model, load_weights=False))
        assert (c.total, c.tuned, c.inserted) == expected[method], method


def test_params_cli_on_a_swin_unetr_config(capsys):
    path = ROOT / "msd" / "task09_spleen" / "swin_unetr" / "med_adapter.yaml"
    assert main(["params", "--config", str(path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["inserted"] == MED_ADAPTER[96]
    assert round(counts["total"] / 1e6, 1) == 62.4  # MONAI's 62.2 M + the adapters
