"""evaluate and predict on a real run directory written by `train_run` (2 tiny epochs)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
from infer_helpers import run_config

from medtune.cli import main
from medtune.training.config import config_from_dict


def test_train_then_evaluate_and_predict(phantom_data, tmp_path, capsys):
    from medtune.training.run import train_run

    data = run_config(phantom_data, tmp_path / "cache")
    data["data"].update(batch_size=1)
    data["train"].update(
        max_epochs=2, warmup_epochs=0, steps_per_epoch=2, val_every=1, progress_bar=False,
        log_every_n_steps=1, lr=0.005,
    )  # fmt: skip
    run = tmp_path / "run"
    train_run(config_from_dict(data), run)
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == 2
    extra = json.loads((run / "adapter" / "adapter_config.json").read_text())["extra"]
    assert (
        extra["seed"] == data["train"]["seed"]
    )  # an adapter folder alone can rebuild the backbone

    assert main(["evaluate", str(run), "--data", str(phantom_data)]) == 0
    summary = json.loads((run / "eval_val_fold0" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["tta"] == "none"
    assert list(summary["metrics"]) == ["WT", "TC", "ET", "mean"]
    assert "| mean |" in capsys.readouterr().out

    inp = tmp_path / "in"
    inp.mkdir()
    for f in (phantom_data / "imagesTr").glob("brats_002_*.nii.gz"):
        shutil.copy(f, inp / f.name)
    assert main(["predict", str(run), "--input", str(inp), "--out", str(tmp_path / "p")]) == 0
    pred = nib.load(str(tmp_path / "p" / "brats_002.nii.gz"))
    ref = nib.load(str(inp / "brats_002_0000.nii.gz"))
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
