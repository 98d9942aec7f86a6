"""Per-channel intensity normalisation of the cache and of prediction inputs.

MRI: z-score over the non-zero voxels of each case (zero outside). CT: clip to the dataset's
0.5 / 99.5 percentiles of labelled foreground voxels, then z-score with the dataset mean / std
of those voxels (nnU-Net's CT scheme); `ct_statistics` computes them once per cache.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medtune.data.dataset import DatasetInfo

CT_SAMPLES_PER_CASE = 20000
"""Foreground voxels drawn per case for the CT statistics."""


def normalise(img: np.ndarray, norm: list[dict]) -> np.ndarray:
    """Per-channel normalisation in place: MRI z-score over non-zero voxels, CT clip + z-score.

    Non-finite voxels (NaN / Inf, only present when prediction was told to replace them) are
    left out of the statistics and set to 0 afterwards."""
    mask = np.any(img != 0, axis=0)
    for c, n in enumerate(norm):
        x = img[c]
        bad = ~np.isfinite(x)
        has_bad = bool(bad.any())
        if n["scheme"] == "ct":
            np.clip(x, n["lower"], n["upper"], out=x)
            x -= n["mean"]
            x /= max(n["std"], 1e-8)
        else:
            vals = x[mask & ~bad] if has_bad else x[mask]
            mean, std = (float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0)
            x -= mean
            x /= max(std, 1e-8)
            x[~mask] = 0
        if has_bad:
            x[bad] = 0
    return img


def ct_statistics(info: DatasetInfo) -> dict:
    """Dataset-level CT statistics over labelled foreground voxels (nnU-Net style)."""
    rng = np.random.default_rng(0)
    vals = []
    for case in info.cases:
        img = np.asarray(nib.load(str(case.images[0])).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(str(case.label)).dataobj) if case.label else None
        fg = (
            img[lab > 0]
            if lab is not None and lab.shape == img.shape and (lab > 0).any()
            else img.ravel()
        )
        fg = fg[np.isfinite(fg)]  # a non-finite case is refused when it is processed
        if fg.size > CT_SAMPLES_PER_CASE:
            fg = rng.choice(fg, CT_SAMPLES_PER_CASE, replace=False)
        vals.append(fg)
    v = np.concatenate(vals).astype(np.float64)
    lo, hi = np.percentile(v, [0.5, 99.5])
    v = np.clip(v, lo, hi)
    return {
        "scheme": "ct",
        "lower": float(lo),
        "upper": float(hi),
        "mean": float(v.mean()),
        "std": float(v.std()),
    }
