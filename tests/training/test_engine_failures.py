"""What a failed, extended or full-disk run leaves behind, and how its errors read.

- a run that fails its checks (weights, devices, data) writes nothing into `--out`, so the same
  command can simply be run again;
- a full disk is one line naming the folder, and no `.tmp-*` file or folder stays behind;
- extending a finished run keeps the best adapter, the whole validation history and the log;
- an error after a progress bar starts on a line of its own.
"""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest
import torch

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.training.module import SegTrainModule
from medtune.training.run import load_run_config, train_run


def _train(path: Path, out: Path, *flags: str) -> int:
    return main(["train", "--config", str(path), "--out", str(out), *flags])


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _no_temporary_files(run: Path) -> None:
    left = [str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".tmp-")]
    assert not left, f"temporary files left behind: {left}"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--model.backbone.pretrained", "{tmp}/offline/vit.pth"], "vit.pth does not exist"),
        (["--model.num_classes", "3"], "model.num_classes"),
        (
            ["--train.devices", "3", "--train.accelerator", "cpu", "--train.strategy", "bogus"],
            "bogus",
        ),
    ],
)
def test_a_failed_start_writes_nothing_and_the_same_command_works_again(
    make_config, tmp_path, capsys, flags, expected
):
    path, _ = make_config()
    out = tmp_path / "run"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    for _ in range(2):  # the second attempt meets the same error, not "folder not empty"
        assert _train(path, out, *flags) == 2
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]  # (after notes such as the parameter counts)
        assert last.startswith("medtune train: error:") and expected in last, err
        assert "Traceback" not in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_accelerator_without_a_gpu_is_one_line(make_config, tmp_path, capsys):
    path, _ = make_config()
    out = tmp_path / "run"
    assert _train(path, out, "--train.accelerator", "gpu") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU found" in err
    assert "--train.accelerator cpu" in err and not out.exists()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _partial_then_enospc(target_arg: int):
    """A writer that leaves a partial file at its target, then finds the disk full."""

    def write(*args, **kwargs):
        target = args[target_arg]
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            Path(target).write_bytes(b"partial")
        _enospc()

    return write


@pytest.mark.parametrize(
    "target, writer",
    [
        ("torch.save", _partial_then_enospc(1)),
        ("safetensors.torch.save_file", _partial_then_enospc(1)),
    ],
    ids=["trainer-checkpoint", "adapter"],
)
def test_full_disk_is_one_line_and_leaves_no_temporary_files(
    make_config, tmp_path, capsys, monkeypatch, target, writer
):
    path, _ = make_config(train__max_epochs=1, train__steps_per_epoch=1)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(target, writer)
        assert _train(path, out) == 1
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("medtune train: error: --out ") and str(out.resolve()) in last, err
    assert "no space left on device" in last and "--resume" in last and "Traceback" not in err
    _no_temporary_files(out)
    # with space again, the run continues in place
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    _no_temporary_files(out)


@pytest.mark.slow
def test_extending_a_finished_run_keeps_best_adapter_history_and_logs(make_config, tmp_path):
    # Epoch 3, the last, is not a multiple of val_every: it is validated because it is last.
    _, cfg = make_config(train__max_epochs=3, train__val_every=2, train__steps_per_epoch=2)
    out = tmp_path / "run"
    first = train_run(cfg, out)
    assert [h["epoch"] for h in first["history"] if "val_mean_dice" in h] == [2, 3]
    # The last checkpoint is written after the last epoch's validation and holds it.
    state = torch.load(out / "trainer_state" / "last.ckpt", weights_only=True)["medtune"]
    assert state["history"] == first["history"] and state["best"] == first["best"]
    rows = _csv_rows(out)
    best_file = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    with pytest.raises(
        MedtuneInputError, match="train.max_epochs 2: .* is in epoch 3; expected at least 3"
    ):
        train_run(load_run_config(out, {"train.max_epochs": 2}), out, resume=True)
    second = train_run(load_run_config(out, {"train.max_epochs": 4}), out, resume=True)
    assert second["resumed"] and second["resumed_from_step"] == first["global_step"] == 6
    assert second["epochs"] == 4 and second["history"][:3] == first["history"]
    dice = {h["epoch"]: h["val_mean_dice"] for h in second["history"] if "val_mean_dice" in h}
    assert sorted(dice) == [2, 3, 4]
    best_epoch = max(dice, key=dice.get)
    assert second["best"]["epoch"] == best_epoch and second["best"]["mean_dice"] == dice[best_epoch]
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())["extra"]["best"]
    assert saved == second["best"]
    if best_epoch < 4:  # the best adapter of the first run is kept as it was
        assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == best_file
    # metrics.csv: every row of the first run, then the rows of epoch 4
    after = _csv_rows(out)
    assert after[: len(rows)] == rows and len(after) > len(rows)
    assert {r["epoch"] for r in after[len(rows) :] if r["epoch"]} == {"3"}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] is True and summary["history"] == second["history"]


def test_an_error_after_a_progress_bar_starts_on_a_new_line(
    make_config, tmp_path, capsys, monkeypatch
):
    path, _ = make_config(train__progress_bar=True, train__max_epochs=1)

    def fail(self, batch, batch_idx):
        raise MedtuneInputError("training stopped: boom")

    monkeypatch.setattr(SegTrainModule, "training_step", fail)
    assert _train(path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "Epoch 0" in err  # the bar was drawn
    at = err.index("medtune train: error: training stopped: boom")
    assert err[at - 1] == "\n", repr(err[max(0, at - 80) : at + 20])
