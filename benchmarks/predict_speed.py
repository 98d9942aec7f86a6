"""Time CPU sliding-window prediction of the demo's Med-Tuning model: old path vs default vs --fast.

The model is the demo's (EfficientNet-Lite0 + Med-Adapters + U-Net decoder, window 16x64x64),
built without downloading weights (random frozen backbone, BatchNorm statistics randomised so
that folding them is not trivial). The volume is a 4x240x240x155 phantom-like random image
(`--small`: a 4x32x128x128 sub-volume). In one process, alternating, it times

- old: today's settings before this change (overlap 2/3, sw batch 1, no BatchNorm folding),
- default: `InferenceOptions()` (same windows and overlap, automatic batch, folded BatchNorm),
- fast: `InferenceOptions(fast=True)`,

and prints median seconds, the ratios and max |probs difference| between old and default.

    PYTHONPATH=src python benchmarks/predict_speed.py --small
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from medtune.data.props import DatasetProps
from medtune.demo import QUICK, demo_config
from medtune.inference.options import InferenceOptions, apply_options
from medtune.inference.predictor import Predictor
from medtune.inference.sliding_window import DEFAULT_OVERLAP
from medtune.modeling.model import build_model
from medtune.training.config import config_from_dict


def demo_model() -> torch.nn.Module:
    """The demo's Med-Tuning model, random frozen backbone, randomised BatchNorm statistics."""
    data = demo_config("med_adapter", QUICK, data_root=Path("."))
    data["model"]["backbone"]["pretrained"] = False
    torch.manual_seed(0)
    model = build_model(config_from_dict(data).model, load_weights=False).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def props() -> DatasetProps:
    return DatasetProps.from_dict(
        {
            "channel_names": ["FLAIR", "T1w", "T1gd", "T2w"],
            "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
            "normalisation": [{"scheme": "zscore_nonzero"} for _ in range(4)],
        },
        "benchmark",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a 4x32x128x128 sub-volume")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (32, 128, 128) if args.small else (155, 240, 240)
    image = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    model = demo_model()
    window = tuple(QUICK.crop)

    def make(opts: InferenceOptions, overlap: float = DEFAULT_OVERLAP) -> Predictor:
        p = Predictor(model=model, props=props(), window=window, overlap=overlap)
        return apply_options(p, opts)

    settings = {
        "old": make(InferenceOptions(sw_batch_size=1, fuse=False)),
        "default": make(InferenceOptions()),
        "fast": make(InferenceOptions(fast=True)),
    }
    for name, p in settings.items():
        print(
            f"{name}: window {p.window}, overlap {p.overlap:.3f}, sw_batch {p.sw_batch_size}, "
            f"{p.fuse_note or 'not fused'}",
            flush=True,
        )
    times: dict[str, list[float]] = {k: [] for k in settings}
    probs: dict[str, torch.Tensor] = {}
    for rep in range(args.repeats):
        for name, p in settings.items():
            t0 = time.perf_counter()
            probs[name] = p.predict_probs(image)
            times[name].append(time.perf_counter() - t0)
            print(f"rep {rep} {name}: {times[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = float((probs["old"] - probs["default"]).abs().max())
    agree = float((probs["fast"].argmax(0) == probs["default"].argmax(0)).float().mean())
    print(f"volume 4x{'x'.join(map(str, shape))}, torch threads {torch.get_num_threads()}")
    print("median s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(
        f"old/default {med['old'] / med['default']:.2f}x, default/fast {med['default'] / med['fast']:.2f}x"
    )
    print(f"max |probs old - default| {diff:.2e}; fast vs default label agreement {agree:.4f}")


if __name__ == "__main__":
    main()
