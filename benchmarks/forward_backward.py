"""Train-step time and peak memory of a config's model, on the CPU or a GPU.

    python benchmarks/forward_backward.py --config configs/brats/vit_b16_upernet/med_adapter.yaml \
        --device cuda --batch 2 --precision bf16

Builds the model without weights (random init, nothing downloaded), then times full training
steps (forward, soft-Dice-like loss, backward, Adam step) on random crops of the config's crop
size (or --crop D H W), and one forward pass of one window in eval mode. Prints the median of
--steps steps after --warmup steps, and the peak memory (GPU: torch.cuda.max_memory_allocated;
CPU: the process's peak resident set size).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medtune.modeling.model import build_model  # noqa: E402
from medtune.modeling.params import count_parameters  # noqa: E402
from medtune.training.config import load_config  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument(
        "--crop", type=int, nargs=3, metavar=("D", "H", "W"), help="override the config's crop size"
    )
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    device = torch.device(args.device)
    crop = tuple(args.crop) if args.crop else tuple(cfg.data.crop_size)
    if args.crop:
        cfg.model.backbone.img_size = crop[1]
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False).to(device)
    counts = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, amsgrad=True)
    c, k = model.in_chans, model.num_classes
    x = torch.randn(args.batch, c, *crop, device=device)
    y = torch.randint(0, k, (args.batch, *crop), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        probs = logits.float().softmax(1)
        onehot = torch.nn.functional.one_hot(y, k).permute(0, 4, 1, 2, 3).float()
        inter = (probs * onehot).sum((0, 2, 3, 4))
        loss = (1 - 2 * inter / (probs.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5))[
            1:
        ].sum()
        loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    model.train()
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    model.eval()
    with torch.no_grad(), autocast:
        model(x[:1])
        _sync(device)
        t0 = time.perf_counter()
        model(x[:1])
        _sync(device)
        fwd = time.perf_counter() - t0
    res = {
        "config": str(args.config),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "batch": args.batch,
        "crop": list(crop),
        "tuned_params": counts.tuned,
        "train_step_s": round(statistics.median(times), 4),
        "forward_one_window_s": round(fwd, 4),
        "peak_memory_gib": round(_peak_gib(device), 3),
        "peak_memory_kind": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS",
    }
    if args.json:
        print(json.dumps(res))
    else:
        for key, val in res.items():
            print(f"{key:22s} {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
