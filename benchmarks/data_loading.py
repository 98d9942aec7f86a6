"""Random-crop throughput: preprocessing cache (.npy, memory-mapped) vs decoding .nii.gz.

Writes BraTS-sized phantoms (4 x 240 x 240 x 155), builds the cache, then draws training crops
(4 x 128^3, the paper's augmentations) through training's own loader
(`medtune.training.datamodule.train_loader`) with 0, 1 and 2 worker processes, from the cache and straight from the .nii.gz files (load, orient to RAS, crop to
the brain, z-score: what the cache stores precomputed). Prints a table; not a timed test.

    .venv/bin/python benchmarks/data_loading.py [--cases 3] [--crops 60] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medtune.data.config import DataConfig
from medtune.data.dataset import load_dataset
from medtune.data.io import load_images
from medtune.data.loaders import TrainCropDataset
from medtune.data.phantoms import write_phantoms
from medtune.data.preprocess import preprocess_dataset, read_props, to_model_space
from medtune.training.datamodule import train_loader


class NiftiCropDataset(TrainCropDataset):
    """The same crops and augmentations, but every sample decodes the case's .nii.gz files."""

    def __init__(self, root: Path, cache: Path, case_ids, cfg: DataConfig, seed: int = 0):
        super().__init__(cache, case_ids, cfg, seed)
        info = load_dataset(root)
        self.files = {c.case_id: (c.images, c.label) for c in info.cases}
        self.props = read_props(cache)

    def arrays(self, case_id: str):
        images, label = self.files[case_id]
        img, lab, _ = to_model_space(load_images(images), load_images(label), self.props)
        return img, lab, np.zeros((0, 4))


class EmptyCrops(torch.utils.data.Dataset):
    """Preallocated tensors of a crop's size: the DataLoader's own ceiling (collate + transfer)."""

    def __init__(self, channels: int, size):
        self.image, self.label = torch.zeros(channels, *size), torch.zeros(*size, dtype=torch.int64)
        self.length = 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        return {"image": self.image, "label": self.label}


def throughput(ds, workers: int, crops: int) -> float:
    """Crops per second in steady state (the first batch, with worker start-up, is not timed)."""
    ds.length = crops + 1
    loader = train_loader(ds, batch_size=1, workers=workers, seed=0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument(
        "--crops", type=int, default=60, help="timed cache crops per setting (.nii.gz: a sixth)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[155, 240, 240], metavar=("D", "H", "W"))
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep data here (default: a temp folder)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        root = work / "raw"
        ds_json = root / "dataset.json"
        if not ds_json.is_file() or json.loads(ds_json.read_text())["numTraining"] != args.cases:
            shutil.rmtree(root, ignore_errors=True)  # --workdir: phantoms are reused when they fit
            shutil.rmtree(work / "cache", ignore_errors=True)
            fov = (240.0, 240.0, 155.0)  # 1 mm voxels at 240 x 240 x 155, like BraTS
            write_phantoms("brats", args.cases, root, seed=0, shape=tuple(args.shape), fov=fov)
        t1 = time.perf_counter()
        cache = preprocess_dataset(root, work / "cache", workers=2)
        t2 = time.perf_counter()
        print(
            f"phantoms: {args.cases} cases of 4 x {args.shape[1]} x {args.shape[2]} x {args.shape[0]} in {t1 - t0:.1f} s; cache built in {t2 - t1:.1f} s",
            file=sys.stderr,
        )
        ids = [f"brats_{i:03d}" for i in range(args.cases)]
        cfg = DataConfig(crop_size=(128, 128, 128), num_workers=0, batch_size=1)
        rows = []
        for w in args.workers:
            cached = throughput(TrainCropDataset(cache, ids, cfg, seed=0), w, args.crops)
            nifti = throughput(
                NiftiCropDataset(root, cache, ids, cfg, seed=0), w, max(4, args.crops // 6)
            )
            ceiling = throughput(EmptyCrops(4, cfg.crop_size), w, args.crops)
            rows.append((w, cached, nifti, ceiling))
        print(
            "| workers | cache (.npy) crops/s | .nii.gz crops/s | speed-up | loader ceiling crops/s |"
        )
        print("|---:|---:|---:|---:|---:|")
        for w, c, n, e in rows:
            print(f"| {w} | {c:.2f} | {n:.2f} | {c / n:.1f}x | {e:.2f} |")
        worst = min(c / n for _, c, n, _ in rows)
        print(
            f"crop 4 x 128^3 with flips and per-channel intensity scale/shift; smallest speed-up "
            f"{worst:.2f}x ({'meets' if worst >= 10 else 'misses'} the 10x target). Loader ceiling: "
            "the same DataLoader returning ready-made tensors (collate + worker transfer only)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
