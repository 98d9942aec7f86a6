"""Training on tiny phantoms on the CPU: the run directory, the adapter files, the loss."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medtune.artifacts.adapters import adapter_tensor_names, load_adapter
from medtune.cli import main
from medtune.modeling.model import build_model
from medtune.training.datamodule import ResumableLoader, ResumableSampler
from medtune.training.module import SegLoss, effective_warmup_epochs, warmup_cosine
from medtune.training.run import load_run_config, train_run
from medtune.training.setup import resolve_precision
from tiny import tiny_experiment


@pytest.fixture(scope="module")
def trained(engine_data, tmp_path_factory):
    """One 2-epoch run (3 steps per epoch) shared by the tests of this module."""
    _, cfg = tiny_experiment(engine_data, train__steps_per_epoch=4)
    out = tmp_path_factory.mktemp("train") / "run"
    summary = train_run(cfg, out)
    return out, cfg, summary


def test_run_directory_contents(trained):
    out, cfg, summary = trained
    for rel in (
        "config.yaml",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter_last/adapter_config.json",
        "adapter_last/adapter_model.safetensors",
        "trainer_state/last.ckpt",
        "logs/metrics.csv",
        "train_summary.json",
    ):
        assert (out / rel).is_file(), rel
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"
    # The resolved config has every default filled in and round-trips.
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["amsgrad"] is True and resolved["train"]["weight_decay"] == 1e-5
    assert resolved["model"]["method"]["train_depth"] == 8
    assert resolved["data"]["cache"] and resolved["data"]["root"] == str(cfg.data.root)
    assert load_run_config(out).to_dict() == resolved
    # Summary: epochs, steps, parameter counts, best metric, history.
    saved = json.loads((out / "train_summary.json").read_text())
    assert saved["epochs"] == 2 and saved["global_step"] == 8
    assert saved["parameters"]["tuned"] < saved["parameters"]["total"]
    assert saved["peak_rss_gb"] > 0 and saved["wall_time_s"] > 0
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert all("val_mean_dice" in h and "train_loss" in h for h in saved["history"])
    assert 0.0 <= saved["best"]["mean_dice"] <= 1.0
    assert set(saved["best"]["regions"]) == {"WT", "TC", "ET"}
    assert len(saved["train_cases"]) == 4 and len(saved["val_cases"]) == 1
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    assert any(r.get("val/mean_dice") for r in rows) and any(r.get("train/loss") for r in rows)


def test_loss_decreases(trained):
    _, _, summary = trained
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[1] < losses[0], losses


def test_adapter_holds_only_tuned_tensors(trained):
    out, cfg, summary = trained
    pl.seed_everything(cfg.train.seed, verbose=False)  # the same random frozen backbone
    fresh = build_model(cfg.model, load_weights=True)
    tensors = load_file(str(out / "adapter_last" / "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(adapter_tensor_names(fresh))
    params = dict(fresh.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    tuned = {n for n, p in params.items() if p.requires_grad}
    assert not frozen & set(tensors), "frozen backbone weights in the adapter file"
    assert tuned <= set(tensors)
    assert sum(tensors[n].numel() for n in tuned) == summary["parameters"]["tuned"]
    # The trained weights differ from the initial ones and load onto the frozen backbone.
    assert any(not torch.equal(tensors[n], params[n].detach()) for n in tuned)
    loaded = load_adapter(out / "adapter_last", fresh)
    for n in tuned:
        assert torch.equal(dict(loaded.named_parameters())[n].detach(), tensors[n])
    # What prediction needs without the dataset travels in `extra`.
    conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
    extra = conf["extra"]
    assert extra["crop_size"] == [8, 32, 32]
    assert extra["dataset"]["channel_names"] == ["FLAIR", "T1", "T1ce", "T2"]
    assert extra["dataset"]["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert extra["dataset"]["medtune"]["source_labels"] == {"1": 1, "2": 2, "3": 4}
    assert len(extra["dataset"]["normalisation"]) == 4
    assert extra["best"]["epoch"] == summary["best"]["epoch"]


def test_checkpoint_loads_weights_only_and_is_small(trained):
    out, _, summary = trained
    ckpt = torch.load(out / "trainer_state" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert {"rng", "best", "history"} <= set(ckpt["medtune"])
    n_params = sum(v.numel() for k, v in ckpt["state_dict"].items() if "running_" not in k)
    # The frozen backbone is random here, so the checkpoint holds it too (not the adapter).
    assert n_params >= summary["parameters"]["tuned"]


def test_loss_is_summed_soft_dice():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 4, 8, 8))
    perfect = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 50
    assert float(SegLoss("dice")(perfect, label)) < 1e-3
    uniform = torch.zeros(2, 3, 4, 8, 8)
    # two foreground classes summed: each Dice well below 1, so the loss is above 1
    assert 1.0 < float(SegLoss("dice")(uniform, label)) <= 2.0
    assert float(SegLoss("dice_ce")(uniform, label)) > float(SegLoss("dice")(uniform, label))


def test_schedule_and_precision_helpers():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    from medtune.training.config import TrainConfig

    assert effective_warmup_epochs(TrainConfig(max_epochs=250, warmup_epochs=50)) == 50
    assert effective_warmup_epochs(TrainConfig(max_epochs=5, warmup_epochs=50)) == 1
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"


def test_resumable_loader_state():
    sampler = ResumableSampler(10, rank=1, world=2)
    loader = ResumableLoader(list(range(100)), sampler, batch_size=2)
    assert list(sampler) == [1, 3, 5, 7, 9] and len(loader) == 3
    sampler.set_epoch(2)
    assert list(sampler) == [21, 23, 25, 27, 29]
    loader.mark(2, 1)
    assert loader.state_dict() == {"epoch": 2, "batches_done": 1}
    loader.mark(2, 3)  # epoch complete: the next one starts at its beginning
    assert loader.state_dict() == {"epoch": 3, "batches_done": 0}
    fresh = ResumableLoader(list(range(100)), ResumableSampler(10, 1, 2), batch_size=2)
    fresh.load_state_dict({"epoch": 2, "batches_done": 1})
    fresh.sampler.set_epoch(2)  # Lightning calls this after loading: the skip is kept
    assert [b.tolist() for b in fresh] == [[25, 27], [29]]


def test_cli_errors_are_one_line(make_config, tmp_path, capsys):
    path, _ = make_config()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["train", "--config", str(path), "--out", str(busy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and str(busy) in err[0]
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["train", "--config", str(path), "--train.bogus", "1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--train.max_epochs", "0"]) == 2
    assert "train.max_epochs" in capsys.readouterr().err


def test_validation_only_at_the_end_with_dice_ce_and_accumulation(make_config, tmp_path):
    _, cfg = make_config(
        train__val_every=0,
        train__max_epochs=1,
        train__steps_per_epoch=1,
        train__accumulate_grad_batches=2,
        train__loss="dice_ce",
        data__batch_size=1,
    )
    summary = train_run(cfg, tmp_path / "run")
    assert summary["global_step"] == 1  # 2 batches of 1 crop, accumulated into one step
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert "val_mean_dice" in summary["history"][0] and summary["best"]["epoch"] == 1
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_sync_batchnorm_only_for_trainable_norms_and_ddp_strategy():
    from lightning.pytorch.strategies import DDPStrategy

    from medtune.training.setup import convert_sync_bn, resolve_strategy

    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 1), torch.nn.BatchNorm3d(4), torch.nn.BatchNorm3d(4)
    )
    for p in net[2].parameters():
        p.requires_grad_(False)
    assert convert_sync_bn(net) == 1
    assert isinstance(net[1], torch.nn.SyncBatchNorm)
    assert type(net[2]) is torch.nn.BatchNorm3d
    from medtune.training.config import TrainConfig

    strategy = resolve_strategy(TrainConfig(strategy="ddp"))
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["find_unused_parameters"]
    assert resolve_strategy(TrainConfig(accelerator="cpu")) == "auto"
    auto_two = resolve_strategy(TrainConfig(accelerator="cpu", devices=2))
    assert isinstance(auto_two, DDPStrategy)
    assert resolve_strategy(TrainConfig(strategy="fsdp", devices=2)) == "fsdp"
