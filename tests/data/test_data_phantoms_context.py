"""The slice-context phantom kind: lesions and vessels alike within a slice, apart in 3D."""

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.dataset import load_dataset
from medtune.data.phantom_context import slice_ambiguity
from medtune.data.phantoms import PHANTOM_KINDS, make_phantom

SHAPE = (24, 48, 48)


def _ras_case(seed, index, shape=SHAPE):
    img, lab, affine = make_phantom("context", seed, index, shape)
    ornt = nib.orientations.io_orientation(affine)
    return (
        nib.orientations.apply_orientation(img[0], ornt),
        nib.orientations.apply_orientation(lab, ornt),
    )


def test_context_kind_is_registered_beside_brats_and_kits():
    assert {"brats", "kits", "context"} <= set(PHANTOM_KINDS)
    with pytest.raises(MedtuneInputError, match="--kind: expected one of .*found 'nope'"):
        make_phantom("nope", 0, 0, SHAPE)


def test_context_dataset_labels_and_sizes(tmp_path, capsys):
    out = tmp_path / "ctx"
    assert main(["phantoms", "--kind", "context", "--cases", "2", "--out", str(out),
                 "--shape", *map(str, SHAPE)]) == 0  # fmt: skip
    info = load_dataset(out)
    assert info.props.labels == {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
    assert info.props.regions == {"organ": [1], "lesion": [2], "vessel": [3]}
    assert info.props.channel_names == ["CT"] and len(info.cases) == 2
    for case in info.cases:
        lab = nib.load(str(case.label))
        assert sorted(np.unique(np.asarray(lab.dataobj)).tolist()) == [0, 1, 2, 3]
        assert sorted(lab.shape) == sorted(SHAPE)


def test_context_deterministic_from_seed():
    a, b, c = (
        make_phantom("context", 3, 1, SHAPE),
        make_phantom("context", 3, 1, SHAPE),
        make_phantom("context", 4, 1, SHAPE),
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_vessels_run_through_slices_and_lesions_end():
    _, lab = _ras_case(0, 0)
    vessel_slices = (lab == 3).any(axis=(0, 1))
    lesion_slices = (lab == 2).any(axis=(0, 1))
    assert vessel_slices.mean() > 0.8  # vessels continue along Z
    assert 0 < lesion_slices.mean() < 0.8  # spheres end within a few slices


def test_lesion_and_vessel_ambiguous_within_a_slice_not_in_3d():
    cases = [_ras_case(0, i) for i in range(6)]
    amb = slice_ambiguity(cases)
    assert amb["discs"] > 200
    # the best single-slice threshold (area or intensity, fitted in sample) is near chance (0.5)
    assert amb["slice"] < 0.66, amb
    # the extent across slices separates them
    assert amb["volume"] > 0.95, amb
