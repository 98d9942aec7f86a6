"""Peak memory and wall time of `medtune predict` on a large volume, on the CPU.

    python benchmarks/predict_memory.py                       # 512 x 512 x 300, 4 channels
    python benchmarks/predict_memory.py --overlap 0           # fewer windows, same buffers
    python benchmarks/predict_memory.py --shape 128 128 64    # quick check

Writes a synthetic 4-channel MRI-like head (four `CASE_000k.nii` channel files, int16, an
anisotropic LPS affine, non-zero almost everywhere so the foreground crop keeps nearly the whole
volume), saves an untrained model of the demo's kind (`medtune.demo.demo_config("med_adapter")`:
EfficientNet-Lite0 + Med-Adapter + U-Net decoder, random init, nothing downloaded) as an
adapter folder, then runs the real command `medtune predict ADAPTER --input DIR --out DIR
--device cpu` in a child process. Prints the child's peak resident set size (the whole
command: imports, model, loading, preprocessing, sliding windows, stitching, restoring and
writing) and its wall time, and checks the output's shape and affine against the input.

Memory does not depend on the overlap (the stitching buffers are sized by the volume, windows
are processed `sw_batch_size` at a time); the time is proportional to the number of windows,
which the script prints, with the measured time per window.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LIMIT_GB = 24.0


def write_volume(folder: Path, shape_xyz: tuple[int, int, int], channels: int, seed: int) -> Path:
    """Four int16 channel files of an ellipsoidal 'head' filling the box, written slab by slab."""
    rng = np.random.default_rng(seed)
    x, y, z = shape_xyz
    aff = np.diag([-0.47, -0.47, 0.9, 1.0])  # LPS-like, anisotropic
    aff[:3, 3] = [x * 0.47 / 2, y * 0.47 / 2, -z * 0.9 / 2]
    folder.mkdir(parents=True, exist_ok=True)
    gx, gy = np.meshgrid(
        np.linspace(-1, 1, x, dtype=np.float32),
        np.linspace(-1, 1, y, dtype=np.float32),
        indexing="ij",
    )
    for c in range(channels):
        arr = np.empty(shape_xyz, dtype=np.int16)
        for k in range(z):
            gz = -1 + 2 * k / max(z - 1, 1)
            inside = (gx**2 + gy**2 + gz**2) < 1.3
            slab = (400 + 150 * c) * inside + rng.normal(0, 30, (x, y)).astype(np.float32)
            arr[:, :, k] = np.clip(slab, 1, 3000).astype(np.int16)
        img = nib.Nifti1Image(arr, aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(folder / f"big_{c:04d}.nii"))
        del arr
    return folder / "big_0000.nii"


def write_adapter(folder: Path, channels: int, sw_batch_size: int) -> tuple[Path, list[int]]:
    """An untrained demo-kind model saved as an adapter folder (seed 0, random backbone)."""
    import torch

    from medtune.artifacts.adapters import save_adapter
    from medtune.core.configbase import to_dict
    from medtune.demo import FULL, demo_config
    from medtune.modeling.model import build_model
    from medtune.training.config import config_from_dict

    cfg = config_from_dict(demo_config("med_adapter", FULL, folder))
    model_cfg, crop = cfg.model, list(cfg.data.crop_size)
    model_cfg.backbone.in_chans = channels
    model_cfg.backbone.pretrained = False
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = build_model(model_cfg, load_weights=False)
    dataset = {
        "name": "benchmark",
        "channel_names": ["FLAIR", "T1", "T1ce", "T2"][:channels]
        + [f"C{i}" for i in range(4, channels)],
        "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
        "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
        "medtune": {"source_labels": {"1": 1, "2": 2, "3": 4}, "et_label": 3, "netc_label": 1},
        "modality": "mri",
        "file_ending": ".nii.gz",
        "spacing": None,
        "normalisation": [{"scheme": "zscore_nonzero"}] * channels,
    }
    extra = {
        "dataset": dataset,
        "crop_size": crop,
        "sw_overlap": 2 / 3,
        "sw_batch_size": sw_batch_size,
        "seed": 0,
    }
    save_adapter(model, folder, to_dict(model_cfg), extra=extra)
    return folder, crop


def n_windows(shape_dhw, window, overlap) -> int:
    """Windows MONAI's sliding_window_inference visits (its stride: int(w * (1 - overlap)))."""
    total = 1
    for s, w in zip(shape_dhw, window):
        if s <= w:
            continue
        stride = max(int(w * (1 - overlap)), 1)
        total *= math.ceil((s - w) / stride) + 1
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument(
        "--overlap", type=float, default=2 / 3, help="sliding-window overlap (paper 2/3)"
    )
    ap.add_argument("--sw-batch-size", type=int, default=4, help="windows per model call")
    ap.add_argument("--tta", choices=("none", "flip8"), default="none")
    ap.add_argument(
        "--workdir", type=Path, help="keep inputs and outputs here (default: a temp dir)"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medtune-predict-mem-"))
    try:
        t0 = time.perf_counter()
        ref = write_volume(work / "input", tuple(args.shape), args.channels, seed=0)
        adapter, crop = write_adapter(work / "adapter", args.channels, args.sw_batch_size)
        # The overlap travels in the adapter's extra (training writes it there).
        cfg_path = adapter / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["extra"]["sw_overlap"] = args.overlap
        cfg_path.write_text(json.dumps(cfg, indent=2))
        print(f"inputs written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-c",
            "import sys; from medtune.cli import main; sys.exit(main(sys.argv[1:]))",
            "predict", str(adapter), "--input", str(work / "input"), "--out", str(out),
            "--device", "cpu", "--tta", args.tta,
        ]  # fmt: skip
        t1 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t1
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        if proc.returncode != 0:
            print(f"medtune predict failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
        pred = nib.load(str(out / "big.nii.gz"))
        src = nib.load(str(ref))
        same = pred.shape == src.shape and np.allclose(pred.affine, src.affine, atol=1e-6)
        x, y, z = args.shape
        windows = n_windows((z, x, y), crop, args.overlap) * (8 if args.tta == "flip8" else 1)
        result = {
            "shape_xyz": list(args.shape),
            "channels": args.channels,
            "window_dhw": crop,
            "overlap": round(args.overlap, 4),
            "sw_batch_size": args.sw_batch_size,
            "windows": windows,
            "peak_rss_gb": round(peak_gb, 3),
            "limit_gb": LIMIT_GB,
            "wall_s": round(wall, 1),
            "s_per_window": round(wall / windows, 4),
            "paper_overlap_windows": n_windows((z, x, y), crop, 2 / 3),
            "output_matches_input_geometry": bool(same),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"medtune predict, {x} x {y} x {z} x {args.channels} channels, window {crop}, "
                f"overlap {args.overlap:.3f} ({windows} windows, sw_batch_size {args.sw_batch_size}):\n"
                f"  peak RSS {peak_gb:.2f} GB (limit {LIMIT_GB:.0f} GB) -> "
                f"{'OK' if peak_gb < LIMIT_GB else 'OVER'}\n"
                f"  wall time {wall:.1f} s ({wall / windows:.3f} s per window; the paper's overlap "
                f"2/3 needs {result['paper_overlap_windows']} windows)\n"
                f"  output shape {pred.shape}, affine equal to the input's: {same}"
            )
        return 0 if peak_gb < LIMIT_GB and same else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
