import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.cached import load_case
from medtune.data.io import save_json
from medtune.data.preprocess import (
    ensure_cache,
    preprocess_dataset,
    preprocess_image,
    read_cache_index,
    read_props,
    restore_to_original,
)


def _oblique_dataset(root: Path, modality="mri") -> tuple[np.ndarray, np.ndarray]:
    """One case drawn on an RAS grid (X=10, Y=12, Z=8), stored S-P-L with a 7 degree tilt."""
    rng = np.random.default_rng(0)
    ras_img = (rng.uniform(50, 100, (10, 12, 8))).astype(np.float32)
    ras_img[:, :, 0] = 0  # a zero slab at the bottom: cropped away
    ras_lab = np.zeros((10, 12, 8), np.uint8)
    ras_lab[7:9, 1:4, 5:7] = 1  # right, posterior, superior
    ras_lab[2:4, 8:10, 2:3] = 2
    t = np.deg2rad(7)
    ras_aff = np.eye(4)
    ras_aff[:3, :3] = np.array(
        [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    ) @ np.diag([0.9, 1.3, 2.5])
    ras_aff[:3, 3] = [-20, 30, -10]
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(("S", "P", "L"))
    )
    aff = ras_aff @ nib.orientations.inv_ornt_aff(ornt, ras_img.shape)
    for sub, arr in (("imagesTr/c1_0000.nii.gz", ras_img), ("labelsTr/c1.nii.gz", ras_lab)):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(nib.orientations.apply_orientation(arr, ornt), aff), str(root / sub)
        )
    ds = {
        "channel_names": {"0": "CT" if modality == "ct" else "T1"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    save_json(ds, root / "dataset.json")
    return ras_img, ras_lab


def test_cache_is_model_order_d_along_z(tmp_path):
    ras_img, ras_lab = _oblique_dataset(tmp_path / "ds")
    cache = preprocess_dataset(tmp_path / "ds", tmp_path / "cache")
    img, lab, meta = load_case(cache, "c1")
    assert isinstance(img, np.memmap) and img.dtype == np.float32 and lab.dtype == np.uint8
    # (C, D, H, W) = (C, Z, X, Y), cropped to the non-zero slab z >= 1
    assert img.shape == (1, 7, 10, 12) and lab.shape == (7, 10, 12)
    assert np.array_equal(lab, ras_lab[:, :, 1:].transpose(2, 0, 1))
    assert meta["spacing"] == pytest.approx([2.5, 0.9, 1.3])
    # MRI: z-score over non-zero voxels
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-3


def test_round_trip_to_original_grid_oblique_anisotropic(tmp_path):
    _oblique_dataset(tmp_path / "ds")
    orig = nib.load(str(tmp_path / "ds/labelsTr/c1.nii.gz"))
    orig_lab = np.asarray(orig.dataobj)
    for spacing in (None, (1.2, 1.2, 1.2)):
        cache = preprocess_dataset(
            tmp_path / "ds", tmp_path / f"cache{spacing is None}", spacing=spacing
        )
        arr, meta = preprocess_image([tmp_path / "ds/imagesTr/c1_0000.nii.gz"], cache)
        cached, lab, _ = load_case(cache, "c1")
        assert np.allclose(arr, cached)
        back = restore_to_original(lab, meta)
        assert back.shape == orig_lab.shape and np.allclose(meta["original_affine"], orig.affine)
        probs = np.eye(3, dtype=np.float32)[lab].transpose(3, 0, 1, 2)
        back_p = restore_to_original(probs, meta)
        assert back_p.shape == (3, *orig_lab.shape) and np.allclose(back_p.sum(0), 1, atol=1e-5)
        if spacing is None:
            assert np.array_equal(back, orig_lab) and np.array_equal(back_p.argmax(0), orig_lab)
        else:
            assert lab.shape != (7, 10, 12)  # resampled
            fg = orig_lab > 0
            assert 2 * (fg & (back > 0)).sum() / (fg.sum() + (back > 0).sum()) > 0.7
            assert (back_p.argmax(0) == orig_lab).mean() > 0.95


def test_ct_uses_dataset_percentiles(tmp_path):
    _oblique_dataset(tmp_path / "ds", modality="ct")
    cache = preprocess_dataset(tmp_path / "ds", tmp_path / "cache")
    props = read_props(cache)
    norm = props.normalisation[0]
    assert (
        props.modality == "ct"
        and norm["scheme"] == "ct"
        and 50 <= norm["lower"] < norm["upper"] <= 100
    )
    img, _, _ = load_case(cache, "c1")
    assert img.max() <= (norm["upper"] - norm["mean"]) / norm["std"] + 1e-5


def test_props_and_skip_up_to_date(brats_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["preprocess", str(brats_root), "--out", str(cache)]) == 0
    assert "4 case(s) preprocessed, 0 up to date" in capsys.readouterr().out
    props = json.loads((cache / "dataset_props.json").read_text())
    assert props["channel_names"] == ["FLAIR", "T1", "T1ce", "T2"] and props["regions"]["TC"] == [
        1,
        3,
    ]
    assert props["labels"]["ET"] == 3 and props["medtune"]["et_label"] == 3
    img, lab, meta = load_case(cache, "brats_000")
    assert img.shape[0] == 4 and img.shape[1:] == lab.shape == tuple(meta["shape"][1:])
    for c in range(4):  # z-score over the brain, zero outside
        brain = img[c] != 0
        assert abs(img[c][brain].mean()) < 1e-3 and abs(img[c][brain].std() - 1) < 1e-2
    assert main(["preprocess", str(brats_root), "--out", str(cache)]) == 0
    assert "0 case(s) preprocessed, 4 up to date" in capsys.readouterr().out
    stamp = (cache / "cases/brats_001.npy").stat().st_mtime_ns
    src = brats_root / "labelsTr/brats_001.nii.gz"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        _, stats = preprocess_dataset(brats_root, cache, return_stats=True)
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stats == {"done": 1, "skipped": 3}
    assert (cache / "cases/brats_001.npy").stat().st_mtime_ns != stamp


def test_workers_give_identical_cache(brats_root, brats_cache, tmp_path):
    cache2 = preprocess_dataset(brats_root, tmp_path / "c2", workers=2)
    for cid in ("brats_000", "brats_003"):
        a, la, _ = load_case(brats_cache, cid)
        b, lb, _ = load_case(cache2, cid)
        assert np.array_equal(a, b) and np.array_equal(la, lb)


def test_ensure_cache_default_location(brats_copy):
    cache = ensure_cache(brats_copy)
    assert cache == brats_copy.parent / "medtune_cache" / brats_copy.name
    assert (cache / "cases/brats_002_seg.npy").is_file()


def test_bad_inputs_are_one_line_errors(brats_cache, tmp_path):
    one_channel = (
        Path(read_cache_index(brats_cache).dataset_root) / "imagesTr/brats_000_0000.nii.gz"
    )
    with pytest.raises(MedtuneInputError, match="expected 4 channel"):
        preprocess_image([one_channel], brats_cache)
    with pytest.raises(MedtuneInputError, match="run medtune preprocess"):
        read_props(tmp_path)
    with pytest.raises(MedtuneInputError, match="expected a cached case"):
        load_case(brats_cache, "nope")
