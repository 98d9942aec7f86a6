import json

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.dataset import load_dataset
from medtune.data.phantoms import make_phantom, write_phantoms

SHAPE = (32, 48, 48)


def _ras(path):
    img = nib.load(str(path))
    return nib.orientations.apply_orientation(
        np.asarray(img.dataobj), nib.orientations.io_orientation(img.affine)
    )


def test_brats_phantom_dataset_layout_and_labels(brats_root):
    info = load_dataset(brats_root)
    assert info.props.channel_names == ["FLAIR", "T1", "T1ce", "T2"]
    assert info.props.labels == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    assert info.props.regions == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert (
        info.props.et_label == 3 and info.props.netc_label == 1 and info.props.source_labels[3] == 4
    )
    assert info.props.modality == "mri" and len(info.cases) == 4
    for case in info.cases:
        lab = nib.load(str(case.label))
        assert sorted(np.unique(np.asarray(lab.dataobj)).tolist()) == [0, 1, 2, 3]
        assert sorted(lab.shape) == sorted(SHAPE)


def test_affine_is_oblique_anisotropic_and_not_identity(brats_root, kits_root):
    for root in (brats_root, kits_root):
        aff = nib.load(str(next((root / "imagesTr").iterdir()))).affine
        spacing = np.sqrt((aff[:3, :3] ** 2).sum(0))
        assert len(set(np.round(spacing, 3))) == 3  # anisotropic
        assert nib.aff2axcodes(aff) != ("R", "A", "S")  # stored in a non-RAS axis order
        assert np.count_nonzero(np.abs(aff[:3, :3]) > 1e-3) > 3  # oblique


def test_deterministic_from_seed():
    a = make_phantom("brats", 7, 0, SHAPE)
    b = make_phantom("brats", 7, 0, SHAPE)
    c = make_phantom("brats", 8, 0, SHAPE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert not np.array_equal(a[1], c[1])


def test_brats_contrasts_like_real_scans(brats_root):
    lab = _ras(brats_root / "labelsTr/brats_000.nii.gz")
    flair, t1, t1ce, t2 = (
        _ras(brats_root / f"imagesTr/brats_000_{c:04d}.nii.gz").astype(float) for c in range(4)
    )
    brain = t1 > 0
    normal = brain & (lab == 0)
    assert np.median(t1ce[lab == 3]) > 1.4 * np.median(t1ce[normal])  # enhancing tumour
    assert np.median(flair[lab == 2]) > 1.3 * np.median(flair[normal])  # edema bright in FLAIR
    assert np.median(t1[lab == 1]) < np.median(t1[normal])  # necrosis dark in T1
    assert np.percentile(t2[normal], 99) > np.percentile(t2[lab == 3], 50)  # CSF bright in T2


def test_enhancing_vessels_as_bright_as_et_across_many_slices():
    img, lab, aff = make_phantom("brats", 0, 1, (48, 64, 64), noise=0.0, bias_field=0.0)
    ornt = nib.orientations.io_orientation(aff)
    t1ce = nib.orientations.apply_orientation(img[2], ornt)
    lab = nib.orientations.apply_orientation(lab, ornt)
    et_level = np.median(t1ce[lab == 3])
    bright_outside = (t1ce > 0.8 * et_level) & (lab == 0)
    slices = np.flatnonzero(bright_outside.sum((0, 1)))  # Z is the last RAS axis
    assert bright_outside.sum() > 20
    assert len(slices) >= 0.4 * t1ce.shape[2]


def test_knobs_change_difficulty_and_are_validated():
    clean, lab, _ = make_phantom("brats", 0, 0, SHAPE, noise=0.0, bias_field=0.0)
    noisy, _, _ = make_phantom("brats", 0, 0, SHAPE, noise=0.2, bias_field=0.0)
    wm = (lab == 0) & (clean[1] > 0)
    rel = lambda x: np.std(x[1][wm]) / np.mean(x[1][wm])  # noqa: E731
    assert rel(noisy) > rel(clean) + 0.05
    with pytest.raises(MedtuneInputError, match="unknown field"):
        make_phantom("brats", 0, 0, SHAPE, sharpness=3)
    with pytest.raises(MedtuneInputError, match="tumour_radius"):
        make_phantom("brats", 0, 0, SHAPE, tumour_radius=(30, 10))


def test_kits_phantom_hounsfield_values(kits_root):
    info = load_dataset(kits_root)
    assert info.props.channel_names == ["CT"] and info.props.modality == "ct"
    assert info.props.regions == {"kidney": [1, 2], "tumour": [2]}
    img = _ras(kits_root / "imagesTr/kits_000_0000.nii.gz").astype(float)
    lab = _ras(kits_root / "labelsTr/kits_000.nii.gz")
    assert img.min() < -900 and np.median(img[0, 0]) < -900  # air around the body
    kidney, tumour = np.median(img[lab == 1]), np.median(img[lab == 2])
    assert 100 < kidney < 250 and tumour < kidney - 10


def test_cli_phantoms(tmp_path, capsys):
    assert (
        main(
            [
                "phantoms",
                "--kind",
                "kits",
                "--cases",
                "2",
                "--out",
                str(tmp_path / "k"),
                "--shape",
                "16",
                "24",
                "24",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert "wrote 2 kits phantoms" in capsys.readouterr().out
    ds = json.loads((tmp_path / "k/dataset.json").read_text())
    assert ds["numTraining"] == 2 and ds["medtune"]["phantom"]["seed"] == 4
    assert main(["phantoms", "--kind", "brats", "--cases", "0", "--out", str(tmp_path / "b")]) == 2


def test_write_phantoms_default_shape(tmp_path):
    out = write_phantoms("brats", 1, tmp_path / "d", seed=1, noise=0.1)
    assert sorted(nib.load(str(out / "labelsTr/brats_000.nii.gz")).shape) == [64, 96, 96]


def test_rewriting_a_phantom_folder_needs_overwrite_and_says_what_it_replaces(
    tmp_path, capsys, tree_hash
):
    out = tmp_path / "d"
    args = ["phantoms", "--kind", "kits", "--shape", "16", "24", "24", "--out", str(out)]
    assert main([*args, "--cases", "3"]) == 0
    capsys.readouterr()
    before = tree_hash(out)
    # 2 cases into a folder of 3: refused, naming what would be replaced; nothing changed
    assert main([*args, "--cases", "2", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err
    assert "a phantom dataset of 3 kits cases (seed 0, shape 16x24x24)" in err
    assert tree_hash(out) == before and len(load_dataset(out).cases) == 3
    # with --overwrite: replaced, and stderr says what was replaced; no stale cases
    assert main([*args, "--cases", "2", "--seed", "1", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "replacing a phantom dataset of 3 kits cases (seed 0, shape 16x24x24)" in err
    assert [c.case_id for c in load_dataset(out).cases] == ["kits_000", "kits_001"]
    assert not list(tmp_path.glob(".tmp-*")), "temporary folder left behind"
    # a bad --shape is refused before anything is replaced
    before = tree_hash(out)
    with pytest.raises(MedtuneInputError, match="--shape"):
        write_phantoms("kits", 1, out, shape=(4, 24, 24), overwrite=True)
    assert tree_hash(out) == before
    # other content is never replaced, even with overwrite
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(MedtuneInputError, match="new, empty or phantom"):
        write_phantoms("kits", 2, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other/notes.txt").read_text() == "mine"


def test_phantoms_out_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep")
    assert main(["phantoms", "--kind", "kits", "--cases", "1", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medtune phantoms: error: --out {target}: expected a folder, found a file"
    assert target.read_text() == "keep"
    inside = target / "ds"  # a folder below a file: one line too
    assert main(["phantoms", "--kind", "kits", "--cases", "1", "--out", str(inside)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--out {inside}: expected a writable folder" in err
