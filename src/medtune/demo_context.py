"""The slice-context part of `medtune demo`: when does cross-slice context matter?

On the 'context' phantoms (`medtune.data.phantom_context`) lesions (spheres) and vessels (tubes
along the slice axis) look the same inside any one slice; only their extent across slices tells
them apart. Head-only tuning is a per-slice model (frozen 2D backbone, 2D decoder), so it shows
how far a slice alone gets; Med-Tuning adds cross-slice adapters; full fine-tuning tunes the 2D
backbone. Every method trains over several seeds; the report gives per-label Dice with the
spread between seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONTEXT_LABELS = ("organ", "lesion", "vessel")


@dataclass(frozen=True)
class ContextPlan:
    """Sizes of the slice-context part of one demo flavour."""

    seeds: tuple[int, ...]
    """Training seeds (every method trains once per seed, on the same data)."""
    train_cases: int
    test_cases: int
    shape: tuple[int, int, int]
    """Phantom size (D, H, W) in voxels."""
    crop: tuple[int, int, int]
    """Training crop / inference window (D, H, W): smaller in-plane than the BraTS part's, so
    that the budget buys enough steps (a 32x32 step costs about a third of a 64x64 one)."""
    epochs: int
    samples_per_epoch: int
    val_every: int
    lr: float = 1e-2
    """Learning rate of every method here (at the BraTS part's 3e-3 the adapters had not yet
    learned the cross-slice cue in this budget)."""
    lesions: int = 6
    """Lesions per case: 6 lesions and 2 vessels give the two labels similar voxel counts."""
    vessels: int = 2


FULL_CONTEXT = ContextPlan(
    seeds=(0, 1),
    train_cases=6,
    test_cases=2,
    shape=(32, 64, 64),
    crop=(16, 32, 32),
    epochs=30,
    samples_per_epoch=16,
    val_every=30,
)
QUICK_CONTEXT = ContextPlan(
    seeds=(0,),
    train_cases=3,
    test_cases=1,
    shape=(24, 64, 64),
    crop=(16, 32, 32),
    epochs=1,
    samples_per_epoch=8,
    val_every=1,
)


def context_config(method: str, seed: int, cplan: ContextPlan, base: dict, root: Path) -> dict:
    """The demo config of `method` (`base`, from `demo_config`) adapted to the context phantoms."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    cfg["name"] = f"demo/context/{method}/seed{seed}"
    backbone = {**base["model"]["backbone"], "in_chans": 1, "img_size": cplan.crop[1]}
    cfg["model"] = {**base["model"], "backbone": backbone}
    if "train_depth" in base["model"]["method"]:
        cfg["model"]["method"] = {**base["model"]["method"], "train_depth": cplan.crop[0]}
    cfg["data"] = {
        **base["data"],
        "root": str(root),
        "crop_size": list(cplan.crop),
        "samples_per_epoch": cplan.samples_per_epoch,
        "num_folds": min(5, cplan.train_cases),
    }
    cfg["train"] = {
        **base["train"],
        "max_epochs": cplan.epochs,
        "lr": cplan.lr,
        "val_every": cplan.val_every,
        "seed": seed,
    }
    return cfg


def measure_ambiguity(root: Path) -> dict[str, float]:
    """`slice_ambiguity` of the cases of the context dataset in `root` (read in RAS)."""
    import nibabel as nib

    from medtune.data.dataset import load_dataset
    from medtune.data.phantom_context import slice_ambiguity

    pairs = []
    for case in load_dataset(root).cases:
        img, lab = (
            nib.as_closest_canonical(nib.load(str(p))) for p in (case.images[0], case.label)
        )
        pairs.append((np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj)))
    return slice_ambiguity(pairs)


def run_context(out: Path, cplan: ContextPlan, methods, base_config, train, evaluate, say):
    """Train and evaluate every method over `cplan.seeds` on the context phantoms.

    `base_config(method) -> dict`, `train(name, cfg) -> train_summary`, and
    `evaluate(run_name, data_root) -> {label: mean Dice}` come from the demo. Returns
    {"rows": [...], "ambiguity": {...}, "stages": {stage: seconds}}.
    """
    from medtune.data.phantoms import write_phantoms

    stages: dict[str, float] = {}
    t = time.time()
    train_root, test_root = out / "data" / "context_train", out / "data" / "context_heldout"
    say(f"slice context: writing {cplan.train_cases} + {cplan.test_cases} context phantoms")
    knobs = {"shape": cplan.shape, "lesions": cplan.lesions, "vessels": cplan.vessels}
    if not (train_root / "dataset.json").is_file():
        write_phantoms("context", cplan.train_cases, train_root, seed=0, **knobs)
    if not (test_root / "dataset.json").is_file():
        write_phantoms("context", cplan.test_cases, test_root, seed=1000, **knobs)
    ambiguity = measure_ambiguity(train_root)
    stages["context phantoms"] = time.time() - t
    rows = []
    for method in methods:
        per_seed = []
        for seed in cplan.seeds:
            name = f"context_{method}_seed{seed}"
            say(f"slice context: training {method}, seed {seed} ({cplan.epochs} epochs)")
            t = time.time()
            summary = train(
                name, context_config(method, seed, cplan, base_config(method), train_root)
            )
            stages[f"context train {method} s{seed}"] = time.time() - t
            t = time.time()
            per_seed.append(evaluate(name, test_root))
            stages[f"context eval {method} s{seed}"] = time.time() - t
        rows.append({"method": method, "tuned": summary["parameters"]["tuned"], "dice": per_seed})
    return {"rows": rows, "ambiguity": ambiguity, "stages": stages}


def _cell(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def context_section(result: dict[str, Any], cplan: ContextPlan) -> list[str]:
    """Markdown lines of the slice-context section of the report."""
    head = ["method", "tuned params"] + [f"Dice {g}" for g in CONTEXT_LABELS] + ["mean Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["method"], f"{r['tuned']:,}"]
        cells += [_cell([d[g] for d in r["dice"]]) for g in CONTEXT_LABELS]
        cells.append(_cell([float(np.mean([d[g] for g in CONTEXT_LABELS])) for d in r["dice"]]))
        lines.append("| " + " | ".join(cells) + " |")
    amb = result["ambiguity"]
    n = len(cplan.seeds)
    spread = (
        f"mean ± half the difference between the {n} seeds"
        if n > 1
        else "1 seed only (--quick), so no spread"
    )
    s = cplan.shape
    return [
        "## Slice context: lesions and vessels that look alike within a slice",
        "",
        "The 'context' phantoms hold an organ, spherical lesions and vessels running along the "
        "slice axis with the same intensity, texture and in-slice size, so one slice shows the same "
        "disc for both; only the extent across slices (a sphere's cross-section shrinks and ends, "
        "a vessel continues) separates them. The lesion and vessel Dice therefore test whether a "
        "method uses context across slices: head-only is a per-slice model and shows how far a "
        "slice alone gets.",
        "",
        f"In-slice ambiguity of the training phantoms ({int(amb['discs'])} discs): the best "
        f"single-slice threshold on disc area or mean intensity separates lesions from vessels "
        f"with balanced accuracy {amb['slice']:.2f} (0.50 is chance; fitted in sample, so "
        f"optimistic), the number of slices a structure spans with {amb['volume']:.2f}.",
        "",
        f"{cplan.train_cases} training and {cplan.test_cases} held-out cases of {s[0]}x{s[1]}x{s[2]} "
        f"voxels ({cplan.lesions} lesions and {cplan.vessels} vessels each); every method "
        f"{cplan.epochs} epochs x {cplan.samples_per_epoch} crops of "
        f"{'x'.join(map(str, cplan.crop))} at learning rate {cplan.lr:g} per seed "
        f"(seeds {', '.join(map(str, cplan.seeds))}); Dice on the held-out cases, {spread}.",
        "",
        *lines,
        "",
    ]
