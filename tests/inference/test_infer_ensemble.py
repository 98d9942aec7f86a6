"""EnsemblePredictor with fake models of known answers: the mean softmax, one running sum (never
N probability volumes alive), and what the runs of an ensemble must share."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from infer_helpers import PositiveIsClass, brats_props

from medtune.core.errors import MedtuneInputError
from medtune.inference import EnsemblePredictor, Predictor
from medtune.inference.ensemble import check_same_data


def _member(cls: int, thr: float = 0.0, props=None) -> Predictor:
    return Predictor(
        PositiveIsClass(cls=cls, low=2, thr=thr), props or brats_props(), (8, 16, 16), overlap=0.5
    )


def test_mean_of_members_with_one_running_sum():
    members = [_member(1), _member(3, thr=0.5), _member(2, thr=-0.5)]
    image = torch.randn(1, 10, 20, 18)
    alive: list[weakref.ref] = []
    most_alive = []
    for m in members:
        inner = m.predict_probs

        def tracked(img, tta="none", progress=False, inner=inner):
            most_alive.append(sum(r() is not None for r in alive))
            out = inner(img, tta=tta, progress=progress)
            alive.append(weakref.ref(out))
            return out

        m.predict_probs = tracked  # type: ignore[method-assign]
    ens = EnsemblePredictor(members)
    got = ens.predict_probs(image)
    # at every member call at most one earlier output (the running sum) is still alive
    assert most_alive == [0, 1, 1]
    want = torch.stack([m.__class__.predict_probs(m, image) for m in members]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert got.shape == (4, 10, 20, 18)
    torch.testing.assert_close(got.sum(0), torch.ones(10, 20, 18), atol=1e-5, rtol=0)


def test_what_the_runs_must_share():
    base = brats_props()
    other_regions = dataclasses.replace(base, regions={"all": [1, 2, 3]}, file_ending=".nii")
    check_same_data([base, other_regions], ["a", "b"])  # evaluation takes regions from the data
    bad = {
        "label set": dataclasses.replace(base, labels={"background": 0, "NCR": 1, "ED": 2, "X": 3}),
        "channels": dataclasses.replace(base, channel_names=["B"]),
        "target spacing": dataclasses.replace(base, spacing=(1.0, 1.0, 1.0)),
        "normalisation": dataclasses.replace(base, normalisation=[{"scheme": "ct", "lower": 0}]),
        "dataset": dataclasses.replace(base, name="other"),
        "medtune.source_labels": dataclasses.replace(
            base, conventions={**base.conventions, "source_labels": {"3": 3}}
        ),
    }
    for what, props in bad.items():
        with pytest.raises(
            MedtuneInputError, match=rf"^b: expected a run of the data of a \(same {what}: "
        ):
            check_same_data([base, props], ["a", "b"])
    with pytest.raises(MedtuneInputError, match="same label set"):
        EnsemblePredictor([_member(1), _member(1, props=bad["label set"])])
    with pytest.raises(MedtuneInputError, match="at least 2 models, found 1"):
        EnsemblePredictor([_member(1)])
