"""The GPU suite: ViT-B/UPerNet and Swin-UNet x six methods x bf16-mixed and fp32, one card.

    PYTHONPATH=src python3 benchmarks/gpu_suite.py --out bench          # one H100/H200, < 5 min
    PYTHONPATH=src python3 benchmarks/gpu_suite.py --tiny --out /tmp/b  # CPU rehearsal, minutes

For each of `configs/brats/vit_b16_upernet/` and `configs/brats/swin_t_unet/` and each method
of `METHODS` (the real recipes, built without weights), at batch 2 on 128^3 crops with 4
channels, in bf16-mixed and in fp32: the `medtune bench` row (`medtune.bench.bench_config`:
parameters, training-step median/min/max, peak memory) plus `config`, `method`, `inserted`.
The floor (the bare frozen backbone over the same slices, forward + backward to its input) is
measured in the same run, alternating with the first method's steps, once per backbone and
precision, and shared by that group's rows; `step_over_compare` is each row's step over the
`head` row's step of its group (`compare_how` says so: not alternated, to stay inside the
time budget). Whole BraTS-size volume inference (155x240x240, the config's window and overlap,
with and without flip8) is timed for the bf16 rows (`medtune predict`'s CUDA default), and
for fp32 too with `--volume-fp32`. Writes OUT/gpu_suite.json (a list of rows) and
OUT/gpu_suite.md (the table, the card, the date and the command).

`--tiny` rehearses the same calls on the CPU: the same config files with the backbones swapped
for the tiny test presets (`vit_test`, `swin_test`), 8x32x32 crops, a volume of one window, one
warm-up and one timed step.

Import path (no Lightning, no nibabel): torch, timm, numpy, PyYAML, einops, safetensors,
huggingface_hub (through timm) and MONAI (the loss, the sliding windows, and
`medtune.modeling.decoders.unetr` imports it). On the H200 image every one of these is there
except MONAI, so carry one wheel, pure Python, no further needs there:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1
    # on the GPU machine, with .whl carried:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_suite.py --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medtune.bench import BenchOptions, bench_config, caption, markdown_table  # noqa: E402
from medtune.bench.measure import device_name, log_stderr, resolve_device  # noqa: E402
from medtune.core.atomic import atomic_write_text  # noqa: E402
from medtune.training.config import load_config  # noqa: E402

CONFIGS = ("vit_b16_upernet", "swin_t_unet")
"""Folders under configs/brats/ (one recipe per method)."""
METHODS = ("med_adapter", "head", "full", "lora", "adapter", "st_adapter")
PRECISIONS = ("bf16", "fp32")
BATCH = 2
TINY_CROP = (8, 32, 32)
TINY_VOLUME = TINY_CROP
TINY_MODEL = {
    "vit_b16_upernet": {
        "model.backbone.name": "vit_test",
        "model.decoder": {"name": "upernet", "options": {"channels": 32}},
    },
    "swin_t_unet": {"model.backbone.name": "swin_test"},
}
"""`--tiny`: the backbone (and decoder width) swapped for the tiny test presets."""


def load(folder: str, method: str, tiny: bool):
    """The recipe configs/brats/<folder>/<method>.yaml (at tiny size with `tiny`)."""
    overrides = {"model.backbone.pretrained": False}
    if tiny:
        d, h, _ = TINY_CROP
        overrides.update(TINY_MODEL[folder])
        overrides.update({"data.crop_size": list(TINY_CROP), "model.backbone.img_size": h})
        if method == "med_adapter":
            overrides["model.method.train_depth"] = d
    return load_config(ROOT / "configs" / "brats" / folder / f"{method}.yaml", overrides)


def run_group(folder: str, precision: str, args: argparse.Namespace) -> list[dict]:
    """The rows of one backbone at one precision; the floor measured with the first."""
    rows: list[dict] = []
    floor = floor_forward = None
    for method in args.methods:
        options = BenchOptions(
            device=args.device,
            precision=precision,
            batch=BATCH,
            steps=args.steps,
            warmup=args.warmup,
            volume=TINY_VOLUME if args.tiny else None,
            compare=None,
            inference=precision == "bf16" or args.volume_fp32,
            floor_s=floor,
            floor_forward_s=floor_forward,
        )
        row = bench_config(load(folder, method, args.tiny), options, name=f"brats/{folder}")
        row["floor_measured_with"] = rows[0]["method"] if rows else method
        floor, floor_forward = row["floor_s"], row["floor_forward_s"]
        rows.append(row)
    head = next((r for r in rows if r["method"] == "head"), None)
    for row in rows:
        row["compare"] = "head" if head else None
        row["compare_step_s"] = head["step_s"] if head else None
        row["step_over_compare"] = row["step_s"] / head["step_s"] if head else None
        row["compare_how"] = "the head row of the same group (not alternated)"
    return rows


def switch_rows(folder: str, args: argparse.Namespace) -> list[dict]:
    """med_adapter in bf16 with `train.activation_checkpointing`, then with `train.compile`
    (one row each with its own floor, no inference), reported beside the default rows."""
    rows = []
    for switch in ("activation_checkpointing", "compile"):
        cfg = load(folder, "med_adapter", args.tiny)
        setattr(cfg.train, switch, True)
        if args.tiny:
            cfg.train.compile_backend = "aot_eager"  # inductor compiles for minutes on a CPU
        options = BenchOptions(
            device=args.device,
            precision="bf16",
            batch=BATCH,
            steps=args.steps,
            warmup=args.warmup,
            compare=None,
            inference=False,
        )
        rows.append(bench_config(cfg, options, name=f"brats/{folder} +{switch}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("bench"), help="folder of the results")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal at tiny size")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--steps", type=int, help="timed steps (default 5; --tiny 1)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 2; --tiny 1)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--volume-fp32", action="store_true", help="also time volumes in fp32")
    ap.add_argument(
        "--switches",
        action="store_true",
        help="also med_adapter bf16 with train.activation_checkpointing and with train.compile",
    )
    args = ap.parse_args(argv)
    args.steps = args.steps or (1 if args.tiny else 5)
    args.warmup = args.warmup or (1 if args.tiny else 2)
    device = resolve_device(args.device)
    started = time.perf_counter()
    rows: list[dict] = []
    for folder in args.configs:
        for precision in args.precisions:
            rows += run_group(folder, precision, args)
            log_stderr(f"{len(rows)} rows, {time.perf_counter() - started:.0f} s")
        if args.switches:
            rows += switch_rows(folder, args)
            log_stderr(f"{len(rows)} rows, {time.perf_counter() - started:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gpu_suite.json", json.dumps(rows, indent=1) + "\n")
    command = "python3 benchmarks/gpu_suite.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    label = "CPU --tiny rehearsal (tiny backbones; not GPU figures)" if args.tiny else "GPU suite"
    md = (
        f"{label}, {when}, {device_name(device)}, {time.perf_counter() - started:.0f} s.\n"
        f"Command: `{command}`\n\n{markdown_table(rows)}\n\n{caption(rows)} "
        "The floor is shared by each backbone x precision group; step/compare is over that "
        "group's head row.\n"
    )
    atomic_write_text(args.out / "gpu_suite.md", md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
