"""The slice axis at prediction: the model sees D along the stored axis, and the label maps come
back in the input's exact geometry (oblique, anisotropic inputs; a real 1-epoch coronal run)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from infer_helpers import PositiveIsClass, box_volume, brats_props, oblique_affine, run_config, save
from torch import nn

from medtune.cli import main
from medtune.data.preprocess import preprocess_image
from medtune.inference import Predictor, load_predictor, predict_files
from medtune.training.config import config_from_dict

ZOOMS = (0.8, 1.0, 3.0)  # mm along the stored axes (nearest to X, Y, Z)


class ChangesAlongD(nn.Module):
    """Fake model: class 1 where channel 0 differs from the previous slice along D (the axis
    the model folds into slices), class 0 elsewhere. Logits `(B, K, d, h, w)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = x[:, 0]
        step = torch.zeros_like(c0)
        step[:, 1:] = (c0[:, 1:] - c0[:, :-1]).abs()
        out = torch.full((x.shape[0], 4, *x.shape[2:]), -10.0)
        out[:, 0] = 0.0
        out[:, 1] = torch.where(step > 1e-3, 10.0, -10.0)
        return out


def _predictor(model, axis: str) -> Predictor:
    props = dataclasses.replace(brats_props(), slice_axis=axis)
    return Predictor(model, props, (8, 16, 16), overlap=0.5)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_each_axis_predicts_on_the_input_grid(tmp_path, axis):
    img, inner = box_volume()
    src = save(img, oblique_affine(zooms=ZOOMS), tmp_path / "in" / "c1_0000.nii.gz")
    (out,) = predict_files(
        _predictor(PositiveIsClass(cls=1), axis), src, tmp_path / "out", progress=False
    )
    pred, ref = nib.load(str(out)), nib.load(str(src))
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    assert np.array_equal(pred.header.get_zooms(), ref.header.get_zooms())
    np.testing.assert_array_equal(np.asarray(pred.dataobj), inner.astype(np.uint8))


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_the_model_slices_along_the_chosen_axis(tmp_path, axis):
    """A box whose intensity ramps along one stored axis: a model reading across slices sees the
    ramp only when D runs along that axis."""
    ramp_axis = {"sagittal": 0, "coronal": 1, "axial": 2}
    for r in range(3):
        img = np.zeros((20, 24, 14), np.float32)
        box = (slice(3, 17), slice(4, 20), slice(2, 12))
        shape = [img.shape[a] if a == r else 1 for a in range(3)]
        ramp = np.arange(1, img.shape[r] + 1, dtype=np.float32).reshape(shape)
        img[box] = np.broadcast_to(ramp, img.shape)[box]
        src = save(img, oblique_affine(zooms=ZOOMS), tmp_path / f"r{r}" / "c_0000.nii.gz")
        (out,) = predict_files(
            _predictor(ChangesAlongD(), axis), src, tmp_path / f"out{r}", progress=False
        )
        marked = (np.asarray(nib.load(str(out)).dataobj) == 1)[box].mean()
        if r == ramp_axis[axis]:
            assert marked > 0.85, (axis, r, marked)  # all but the first slice of the box
        else:
            assert marked < 0.15, (axis, r, marked)  # constant along D: nothing marked


def test_train_coronal_then_evaluate_and_predict_use_the_stored_axis(phantom_data, tmp_path):
    from medtune.training.run import train_run

    data = run_config(phantom_data, tmp_path / "cache")
    data["data"].update(batch_size=1, slice_axis="coronal")
    data["train"].update(
        max_epochs=1, warmup_epochs=0, steps_per_epoch=1, val_every=1, progress_bar=False,
        log_every_n_steps=1,
    )  # fmt: skip
    run = tmp_path / "run"
    train_run(config_from_dict(data), run)
    extra = json.loads((run / "adapter" / "adapter_config.json").read_text())["extra"]
    assert extra["dataset"]["slice_axis"] == "coronal"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["slice_axis"] == "coronal"
    cached = np.load(tmp_path / "cache" / "cases" / "brats_000_seg.npy")
    meta = json.loads((tmp_path / "cache" / "cases" / "brats_000.json").read_text())
    box = np.subtract(meta["bbox_end"], meta["bbox_start"])  # cropped (X, Y, Z)
    assert cached.shape == (box[1], box[0], box[2])  # D along Y (posterior -> anterior)

    assert main(["evaluate", str(run), "--data", str(phantom_data)]) == 0
    summary = json.loads((run / "eval_val_fold0" / "summary.json").read_text())
    assert summary["slice_axis"] == "coronal" and summary["n_cases"] == 1

    shutil.copytree(run / "adapter", tmp_path / "shared")  # the adapter alone, no dataset
    shutil.rmtree(tmp_path / "cache")
    predictor = load_predictor(tmp_path / "shared")
    assert predictor.props.slice_axis == "coronal"
    inp = tmp_path / "in"
    inp.mkdir()
    files = sorted((phantom_data / "imagesTr").glob("brats_002_*.nii.gz"))
    for f in files:
        shutil.copy(f, inp / f.name)
    _, meta = preprocess_image(files, predictor.props)  # what infer_case feeds the model
    assert meta["axes"] == [1, 0, 2] and meta["slice_axis"] == "coronal"
    assert (
        main(
            ["predict", str(tmp_path / "shared"), "--input", str(inp), "--out", str(tmp_path / "p")]
        )
        == 0
    )
    pred = nib.load(str(tmp_path / "p" / "brats_002.nii.gz"))
    ref = nib.load(str(inp / "brats_002_0000.nii.gz"))
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
