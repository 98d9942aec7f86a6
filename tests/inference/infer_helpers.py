"""Helpers of the inference tests: the tiny run's config, hand-made NIfTI volumes on oblique
affines, a fake model with a known answer, BraTS-like dataset properties."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medtune.data.props import DatasetProps

SHAPE = (16, 40, 40)  # phantom (D, H, W)
CROP = [8, 32, 32]


def run_config(root: Path, cache: Path) -> dict:
    return {
        "name": "test/inference",
        "model": {
            "backbone": {
                "name": "vit_test",
                "in_chans": 4,
                "img_size": 32,
                "pretrained": False,
                "timm_kwargs": {"depth": 4},
            },
            "decoder": {"name": "upernet", "options": {"channels": 32}},
            "num_classes": 4,
            "method": {"name": "med_adapter"},
        },
        "data": {
            "root": str(root),
            "cache": str(cache),
            "crop_size": CROP,
            "num_folds": 3,
            "num_workers": 0,
        },
        "train": {"max_epochs": 1, "seed": 7},
    }


def oblique_affine(zooms=(0.9, 1.3, 2.7), angle_deg=30.0, flip_x=True) -> np.ndarray:
    """An oblique (rotated about a skew axis), anisotropic affine, LPS-like when `flip_x`."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms)
    aff[:3, 3] = [37.5, -12.25, 80.0]
    return aff


def save(arr: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def box_volume(shape=(20, 24, 14)) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z) float32, inner mask): zero background, a box of 1, an inner box of 3.
    After the z-score over non-zero voxels, exactly the inner box is positive."""
    img = np.zeros(shape, np.float32)
    img[3:17, 4:20, 2:12] = 1.0
    img[6:10, 8:15, 4:9] = 3.0
    return img, img == 3.0


class PositiveIsClass(nn.Module):
    """Fake segmentation model: class `cls` where channel 0 > `thr`, class `low` where channel 0
    is non-zero and <= thr, class 0 elsewhere. Logits `(B, K, d, h, w)`."""

    def __init__(self, num_classes=4, cls=1, low=None, thr=0.0):
        super().__init__()
        self.k, self.cls, self.low, self.thr = num_classes, cls, low, thr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = x[:, 0]
        out = torch.full((x.shape[0], self.k, *x.shape[2:]), -10.0)
        out[:, 0] = 0.0
        out[:, self.cls] = torch.where(c0 > self.thr, 10.0, -10.0)
        if self.low is not None:
            out[:, self.low] = torch.where((c0 != 0) & (c0 <= self.thr), 10.0, -10.0)
        return out


def brats_props(channels=("A",), spacing=None) -> DatasetProps:
    return DatasetProps.from_dict(
        {
            "name": "hand",
            "channel_names": list(channels),
            "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
            "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
            "medtune": {
                "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
                "source_labels": {"1": 1, "2": 2, "3": 4},
                "et_label": 3,
                "netc_label": 1,
            },
            "modality": "mri",
            "file_ending": ".nii.gz",
            "spacing": list(spacing) if spacing else None,
            "normalisation": [{"scheme": "zscore_nonzero"} for _ in channels],
        },
        "brats_props",
    )


def write_hand_dataset(root: Path, with_et_convention=True) -> Path:
    """A one-case nnU-Net dataset: a tissue box (ED) holding a 3x3x3 bright cube (ET), on an
    oblique affine. dataset.json declares the BraTS conventions unless told not to."""
    img = np.zeros((20, 24, 14), np.float32)
    img[3:17, 4:20, 2:12] = 1.0
    img[8:11, 10:13, 5:8] = 5.0
    lab = np.zeros(img.shape, np.uint8)
    lab[3:17, 4:20, 2:12] = 2
    lab[8:11, 10:13, 5:8] = 3
    aff = oblique_affine()
    save(img, aff, root / "imagesTr" / "case1_0000.nii.gz")
    save(lab, aff, root / "labelsTr" / "case1.nii.gz")
    medtune = dict(brats_props().conventions)
    if not with_et_convention:
        medtune = {"regions": medtune["regions"]}
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "hand",
                "channel_names": {"0": "A"},
                "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
                "numTraining": 1,
                "file_ending": ".nii.gz",
                "medtune": medtune,
            }
        )
    )
    return root
