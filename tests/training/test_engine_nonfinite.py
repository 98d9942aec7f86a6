"""Training never runs on NaN: a NaN image is refused before training, and a non-finite loss
stops the run at once (before the step's update), leaving a run folder that resumes."""

from __future__ import annotations

import shutil

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.training.run import train_run
from tiny import tiny_experiment


def test_train_refuses_a_nan_training_image(engine_data, tmp_path, capsys):
    data = shutil.copytree(engine_data, tmp_path / "ds", ignore=shutil.ignore_patterns("*cache*"))
    f = data / "imagesTr/brats_003_0002.nii.gz"
    img = nib.load(str(f))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[5, 6, 7] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(f))
    raw, _ = tiny_experiment(data, train__max_epochs=1)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medtune train: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{f}: expected finite intensities, found 1 NaN and 0 Inf voxels" in lines[0]
    assert not (run / "adapter").exists() and not (run / "train_summary.json").exists()


class PoisonBatch(pl.Callback):
    """Puts one NaN into the first batch of the second epoch (as a NaN crop would)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            batch["image"][0, 0, 0, 0, 0] = float("nan")


def test_non_finite_loss_stops_training_and_the_run_resumes(engine_data, tmp_path):
    _, cfg = tiny_experiment(engine_data, train__max_epochs=2, train__steps_per_epoch=3)
    run = tmp_path / "run"
    with pytest.raises(MedtuneInputError) as exc:
        train_run(cfg, run, callbacks=[PoisonBatch()])
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("train: expected a finite loss, found nan at epoch 2, batch 1")
    assert "--resume" in msg
    # the checkpoint of epoch 1 is what the folder holds: finite, and it resumes
    state = torch.load(run / "trainer_state/last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == 3
    assert all(
        torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()
    )
    assert not (run / "train_summary.json").exists()
    _, cfg = tiny_experiment(engine_data, train__max_epochs=2, train__steps_per_epoch=3)
    summary = train_run(cfg, run, resume=True)
    assert summary["epochs"] == 2 and summary["global_step"] == 6
    assert all(np.isfinite(h["train_loss"]) for h in summary["history"])
