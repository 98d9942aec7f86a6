"""`data.slice_axis`: which RAS axis the model's D runs along, in the cache, in `preprocess_image`
and back in `restore_to_original` (oblique, anisotropic volumes stored in non-RAS order)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.cached import load_case
from medtune.data.io import save_json
from medtune.data.preprocess import (
    CACHE_VERSION,
    preprocess_dataset,
    preprocess_image,
    read_cache_index,
    read_props,
    restore_to_original,
)
from medtune.data.props import DatasetProps

RAS_SHAPE = (12, 10, 9)  # X, Y, Z: all different, so a wrong transpose changes the shape
# The documented convention (docs/data.md): the RAS axis of D, H, W for each slice axis.
EXPECTED_DHW = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}


def _rotation(angle_deg: float) -> np.ndarray:
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _write_case(root: Path, case: str, zooms, seed: int = 0, stored=("S", "P", "L")):
    """One case drawn on an RAS grid `RAS_SHAPE` with voxel spacing `zooms` (X, Y, Z mm), stored
    in axis order `stored` on a 20-degree oblique affine. Returns (RAS image, RAS label)."""
    rng = np.random.default_rng(seed)
    ras_img = rng.uniform(50, 100, RAS_SHAPE).astype(np.float32)
    ras_img[:, :, 0] = 0  # a zero slab at the bottom (inferior): cropped away
    ras_lab = np.zeros(RAS_SHAPE, np.uint8)
    ras_lab[8:11, 1:4, 5:8] = 1  # right, posterior, superior
    ras_lab[1:4, 6:9, 2:4] = 2  # left, anterior, inferior
    ras_aff = np.eye(4)
    ras_aff[:3, :3] = _rotation(20.0) @ np.diag(zooms)
    ras_aff[:3, 3] = [-20.0, 30.0, -10.0]
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(stored)
    )
    aff = ras_aff @ nib.orientations.inv_ornt_aff(ornt, RAS_SHAPE)
    for sub, arr in (
        (f"imagesTr/{case}_0000.nii.gz", ras_img),
        (f"labelsTr/{case}.nii.gz", ras_lab),
    ):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(nib.orientations.apply_orientation(arr, ornt), aff), str(root / sub)
        )
    return ras_img, ras_lab


def _dataset(root: Path, zooms_per_case, first: int = 0) -> Path:
    """Cases c<first>, c<first+1>, ... with the given spacings; dataset.json lists all cases."""
    for i, zooms in enumerate(zooms_per_case, start=first):
        _write_case(root, f"c{i}", zooms, seed=i)
    ds = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": first + len(zooms_per_case),
        "file_ending": ".nii.gz",
    }
    save_json(ds, root / "dataset.json")
    return root


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_each_axis_round_trips_exactly_on_an_oblique_anisotropic_volume(tmp_path, axis):
    zooms = (0.8, 1.0, 3.0)
    ras_img, ras_lab = _write_case(tmp_path / "ds", "c0", zooms)
    _dataset(tmp_path / "ds", [zooms])
    cache = preprocess_dataset(tmp_path / "ds", tmp_path / "cache", slice_axis=axis)
    img, lab, meta = load_case(cache, "c0")
    dhw = EXPECTED_DHW[axis]
    # the model's D runs along the chosen RAS axis; the zero slab z = 0 is cropped
    assert np.array_equal(lab, ras_lab[:, :, 1:].transpose(dhw))
    assert img.shape == (1, *lab.shape)
    assert meta["spacing"] == pytest.approx([zooms[a] for a in dhw])
    assert meta["slice_axis"] == axis and read_props(cache).slice_axis == axis
    fg = np.argwhere(lab == 1)[0]  # the (label, d, h, w) samples follow the same order
    assert any(np.array_equal(row[1:], fg) for row in np.load(cache / "cases" / "c0_fg.npy"))

    src = tmp_path / "ds" / "imagesTr" / "c0_0000.nii.gz"
    arr, pmeta = preprocess_image([src], cache)
    assert np.allclose(arr, img) and pmeta["axes"] == list(dhw)
    orig = nib.load(str(tmp_path / "ds" / "labelsTr" / "c0.nii.gz"))
    orig_lab = np.asarray(orig.dataobj)
    back = restore_to_original(lab, pmeta)  # an identity "prediction"
    assert back.shape == orig_lab.shape and np.array_equal(back, orig_lab)
    assert np.allclose(pmeta["original_affine"], orig.affine)
    probs = np.eye(3, dtype=np.float32)[lab].transpose(3, 0, 1, 2)  # (K, D, H, W)
    back_p = restore_to_original(probs, pmeta)
    assert back_p.shape == (3, *orig_lab.shape)
    assert np.array_equal(back_p.argmax(0), orig_lab)
    np.testing.assert_allclose(back_p.sum(0), 1.0, atol=1e-6)


def test_resampled_coronal_cache_maps_back_to_the_input_grid(tmp_path):
    _dataset(tmp_path / "ds", [(0.8, 1.0, 3.0)])
    cache = preprocess_dataset(
        tmp_path / "ds", tmp_path / "cache", spacing=(1.5, 1.5, 1.5), slice_axis="coronal"
    )
    _, lab, meta = load_case(cache, "c0")
    assert meta["spacing"] == pytest.approx([1.5, 1.5, 1.5])
    assert lab.shape[0] == meta["resampled_shape"][1]  # D along Y
    orig = np.asarray(nib.load(str(tmp_path / "ds" / "labelsTr" / "c0.nii.gz")).dataobj)
    back = restore_to_original(lab, meta)
    assert back.shape == orig.shape
    assert (back == orig).mean() > 0.95 and set(np.unique(back)) == {0, 1, 2}


def test_auto_picks_the_coarsest_median_axis_and_records_it(tmp_path, capsys):
    # 3 mm along X in two of three cases: the median is coarsest along X -> sagittal
    ds = _dataset(tmp_path / "ds", [(3.0, 1.0, 0.8), (3.0, 0.9, 0.8), (0.8, 0.8, 2.0)])
    cache = tmp_path / "cache"
    assert main(["preprocess", str(ds), "--out", str(cache), "--slice-axis", "auto"]) == 0
    assert "3 case(s) preprocessed, 0 up to date, slice axis sagittal" in capsys.readouterr().out
    written = json.loads((cache / "dataset_props.json").read_text())
    assert written["slice_axis"] == "sagittal" and written["slice_axis_setting"] == "auto"
    assert written["median_spacing"] == pytest.approx([3.0, 0.9, 0.8])
    _, lab, meta = load_case(cache, "c0")
    assert lab.shape[0] == RAS_SHAPE[0] and meta["axes"] == [0, 1, 2]
    # naming the axis auto resolved to keeps the cases; so does auto again
    _, stats = preprocess_dataset(ds, cache, slice_axis="sagittal", return_stats=True)
    assert stats == {"done": 0, "skipped": 3}
    assert read_cache_index(cache).slice_axis_setting == "auto"  # still auto's decision
    _, stats = preprocess_dataset(ds, cache, slice_axis="auto", return_stats=True)
    assert stats == {"done": 0, "skipped": 3} and read_props(cache).slice_axis == "sagittal"
    # with a target spacing, the cache's own grid decides
    other = preprocess_dataset(ds, tmp_path / "c2", spacing=(1.0, 1.0, 2.5), slice_axis="auto")
    assert read_props(other).slice_axis == "axial"
    # isotropic: a tie goes to axial
    iso = _dataset(tmp_path / "iso", [(1.0, 1.0, 1.0)])
    assert read_props(preprocess_dataset(iso, tmp_path / "c3", slice_axis="auto")).slice_axis == (
        "axial"
    )


def test_auto_is_decided_once_new_cases_do_not_flip_it(tmp_path):
    ds = _dataset(tmp_path / "ds", [(3.0, 1.0, 0.8)])
    cache = preprocess_dataset(ds, tmp_path / "cache", slice_axis="auto")
    assert read_props(cache).slice_axis == "sagittal"
    preprocess_dataset(ds, cache, slice_axis="sagittal")  # a resumed run names the resolved axis
    _dataset(ds, [(0.8, 0.8, 3.0), (0.8, 0.8, 3.0)], first=1)  # now Z is coarsest
    _, stats = preprocess_dataset(ds, cache, slice_axis="auto", return_stats=True)
    assert stats == {"done": 2, "skipped": 1}  # only the new cases, along the recorded axis
    assert read_props(cache).slice_axis == "sagittal"
    assert load_case(cache, "c2")[2]["slice_axis"] == "sagittal"
    fresh = preprocess_dataset(ds, tmp_path / "fresh", slice_axis="auto")
    assert read_props(fresh).slice_axis == "axial"  # a new cache decides from all cases


def test_another_axis_rebuilds_the_cache_in_place(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds", [(0.8, 1.0, 3.0), (0.9, 1.0, 3.0)])
    cache = preprocess_dataset(ds, tmp_path / "cache")
    assert load_case(cache, "c0")[1].shape[0] == RAS_SHAPE[2] - 1  # axial: D along Z, cropped
    capsys.readouterr()
    _, stats = preprocess_dataset(ds, cache, slice_axis="coronal", return_stats=True)
    assert stats == {"done": 2, "skipped": 0}
    err = capsys.readouterr().err
    assert "slice axis coronal (the cache was built axial); rebuilding 2 case(s)" in err
    assert load_case(cache, "c0")[1].shape[0] == RAS_SHAPE[1]
    assert read_cache_index(cache).props.slice_axis == "coronal"
    _, stats = preprocess_dataset(ds, cache, slice_axis="coronal", return_stats=True)
    assert stats == {"done": 0, "skipped": 2}


def test_caches_and_records_from_before_the_slice_axis_read_as_axial(tmp_path):
    """An axial cache written by the previous release (no slice-axis keys, its settings key)
    stays valid, and its case records still map back."""
    ds = _dataset(tmp_path / "ds", [(0.8, 1.0, 3.0)])
    cache = preprocess_dataset(ds, tmp_path / "cache")
    index = json.loads((cache / "dataset_props.json").read_text())
    for k in ("slice_axis", "slice_axis_setting", "median_spacing"):
        index.pop(k)
    save_json(index, cache / "dataset_props.json")
    old_key = json.dumps([CACHE_VERSION, None, index["normalisation"]], sort_keys=True)
    meta = json.loads((cache / "cases" / "c0.json").read_text())
    meta.pop("axes"), meta.pop("slice_axis")
    meta["settings_key"] = hashlib.sha1(old_key.encode()).hexdigest()[:16]
    save_json(meta, cache / "cases" / "c0.json")
    assert read_props(cache).slice_axis == "axial"
    _, stats = preprocess_dataset(ds, cache, return_stats=True)
    assert stats == {"done": 0, "skipped": 1}
    _, lab, old_meta = load_case(cache, "c0")
    orig = np.asarray(nib.load(str(ds / "labelsTr" / "c0.nii.gz")).dataobj)
    assert "axes" not in old_meta and np.array_equal(restore_to_original(lab, old_meta), orig)


def test_bad_slice_axis_is_one_line(tmp_path):
    ds = _dataset(tmp_path / "ds", [(0.8, 1.0, 3.0)])
    with pytest.raises(
        MedtuneInputError, match="expected one of axial, coronal, sagittal, auto, found 'oblique'"
    ):
        preprocess_dataset(ds, tmp_path / "cache", slice_axis="oblique")
    assert not (tmp_path / "cache").exists()
    props = {"channel_names": ["T1"], "labels": {"background": 0}}
    assert DatasetProps.from_dict(props, "old.json").slice_axis == "axial"
    assert DatasetProps.from_dict(props, "old.json").to_dict()["slice_axis"] == "axial"
    with pytest.raises(
        MedtuneInputError,
        match=r"a\.json: slice_axis: expected one of axial, coronal, sagittal, found 'auto'",
    ):
        DatasetProps.from_dict({**props, "slice_axis": "auto"}, "a.json")
