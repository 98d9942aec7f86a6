import json

import numpy as np
import pytest
import torch

from medtune.core.errors import MedtuneInputError
from medtune.data.cached import load_case
from medtune.data.config import DataConfig
from medtune.data.loaders import TrainCropDataset, VolumeDataset
from medtune.data.splits import get_splits, make_splits
from medtune.training.datamodule import train_loader

IDS = ["brats_000", "brats_001", "brats_002", "brats_003"]


def cfg(**kw):
    base = dict(crop_size=(16, 24, 24), num_workers=0, batch_size=2)
    base.update(kw)
    return DataConfig(**base)


def test_crops_shapes_types_and_determinism(brats_cache):
    ds = TrainCropDataset(brats_cache, IDS, cfg(), seed=1)
    a = ds.sample(2, 1)
    assert a["image"].shape == (4, 16, 24, 24) and a["image"].dtype == torch.float32
    assert a["label"].shape == (16, 24, 24) and a["label"].dtype == torch.int64
    again = TrainCropDataset(brats_cache, IDS, cfg(), seed=1).sample(2, 1)
    assert torch.equal(a["image"], again["image"]) and torch.equal(a["label"], again["label"])
    assert torch.equal(ds[2 * len(ds) + 1]["image"], a["image"])  # epoch travels in the index
    assert not torch.equal(ds.sample(3, 1)["image"], a["image"])
    assert not torch.equal(
        TrainCropDataset(brats_cache, IDS, cfg(), seed=2).sample(2, 1)["image"], a["image"]
    )


def test_each_case_once_per_epoch(brats_cache):
    ds = TrainCropDataset(brats_cache, IDS, cfg(), seed=0)
    assert sorted(ds.case_for(5, i) for i in range(len(ds))) == IDS


def test_small_volumes_are_padded(brats_cache):
    _, lab, _ = load_case(brats_cache, "brats_000")
    big = tuple(s + 8 for s in lab.shape)
    out = TrainCropDataset(brats_cache, IDS, cfg(crop_size=big, flip_prob=0.0), seed=0).sample(0, 0)
    assert out["image"].shape[1:] == big and out["label"].shape == big
    assert out["label"].sum() > 0 and (out["label"][:4] == 0).all()  # symmetric padding


def test_intensity_scale_and_shift_per_channel(brats_cache):
    ds = TrainCropDataset(brats_cache, IDS, cfg(crop_size=(8, 8, 8), flip_prob=0.0), seed=0)
    img, lab, _ = load_case(brats_cache, ds.case_for(0, 0))
    shape = lab.shape
    full = TrainCropDataset(brats_cache, IDS, cfg(crop_size=shape, flip_prob=0.0), seed=0)
    out = full.sample(0, 0)["image"].numpy()
    ref = np.asarray(load_case(brats_cache, full.case_for(0, 0))[0])
    slopes = []
    for c in range(4):
        slope, icpt = np.polyfit(ref[c].ravel(), out[c].ravel(), 1)
        assert 0.9 - 1e-4 <= slope <= 1.1 + 1e-4 and -0.1 - 1e-4 <= icpt <= 0.1 + 1e-4
        slopes.append(slope)
    assert len(set(np.round(slopes, 6))) == 4  # drawn per channel


def test_flips_on_three_axes(brats_cache):
    _, lab, _ = load_case(brats_cache, "brats_000")
    ds = TrainCropDataset(
        brats_cache,
        ["brats_000"],
        cfg(crop_size=lab.shape, flip_prob=1.0, intensity_scale=0.0, intensity_shift=0.0),
        seed=0,
    )
    out = ds.sample(0, 0)
    assert np.array_equal(out["label"].numpy(), np.flip(np.asarray(lab), (0, 1, 2)))
    half = TrainCropDataset(
        brats_cache, ["brats_000"], cfg(crop_size=lab.shape, flip_prob=0.5), seed=0
    )
    subsets = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    counts = np.zeros(3)
    for i in range(16):
        got = half.sample(0, i)["label"].numpy()
        axes = [
            s
            for s in subsets
            if np.array_equal(got, np.flip(np.asarray(lab), [k for k in range(3) if s[k]]))
        ]
        assert len(axes) == 1
        counts += axes[0]
    assert all(2 <= n <= 14 for n in counts), counts  # each axis flipped about half the time


def test_foreground_biased_crops(brats_cache):
    ds = TrainCropDataset(brats_cache, IDS, cfg(crop_size=(8, 8, 8), foreground_prob=1.0), seed=0)
    assert all(ds.sample(0, i)["label"].sum() > 0 for i in range(8))


def test_worker_processes_see_the_same_crops(brats_cache):
    def sums(workers):
        ds = TrainCropDataset(brats_cache, IDS, cfg(num_workers=workers), seed=4)
        loader = train_loader(ds, batch_size=2, workers=workers, seed=4)
        loader.sampler.set_epoch(3)
        return [b["image"].sum().item() for b in loader]

    assert sums(2) == sums(0)


def test_volume_dataset(brats_cache):
    vol = VolumeDataset(brats_cache, ["brats_002"])[0]
    img, lab, _ = load_case(brats_cache, "brats_002")
    assert (
        vol["case_id"] == "brats_002"
        and vol["image"].shape == img.shape
        and vol["label"].dtype == torch.int64
    )


def test_splits_written_and_reused(brats_cache):
    ids = [f"c{i:02d}" for i in range(11)]
    splits = get_splits(brats_cache.parent, ids, num_folds=5, seed=12345)
    assert len(splits) == 5 and sorted(sum((s["val"] for s in splits), [])) == ids
    for s in splits:
        assert sorted(s["train"] + s["val"]) == ids and not set(s["train"]) & set(s["val"])
    path = brats_cache.parent / "splits_final.json"
    assert json.loads(path.read_text()) == splits
    assert make_splits(ids, 5, 1) != splits
    custom = [{"train": ids[:6], "val": ids[6:]}]
    path.write_text(json.dumps(custom))
    assert get_splits(brats_cache.parent, ids) == custom  # reused as is
    with pytest.raises(MedtuneInputError, match="unknown"):
        get_splits(brats_cache.parent, ids[:3])
    with pytest.raises(MedtuneInputError, match="at least num_folds"):
        make_splits(ids[:3], 5)
    path.unlink()
