"""What `medtune bench` and `benchmarks/gpu_suite.py` measure, in one place.

For one experiment config (its model built without weights: random init, nothing read or
downloaded) on one device and precision:

- parameters: total / tuned / inserted (`medtune.modeling.params.count_parameters`);
- the training step: forward, the config's loss (`train.loss`), backward, the config's Adam
  step, on one fixed random batch `(B, C, D, H, W)` of the crop size; seconds as median / min /
  max over `steps` timed steps after `warmup` untimed ones;
- peak memory of the training step (GPU: `torch.cuda.max_memory_allocated`; CPU: the increase
  of the peak resident set size), read after the warm-up steps of the first model, before any
  second model is built;
- the floor: the bare frozen backbone (method `head`: nothing inserted; no decoder) over the
  same slices `(B*D, C, H, W)` (a native 3D family: the volume), forward plus backward to its
  input from the sum of its features. `step / floor` is what the method and decoder cost on
  top of running the backbone at all. Its forward alone without gradient is timed too
  (`floor_forward_s`: what head-only runs of the backbone); the difference is the backward
  through the frozen backbone (`floor_backward_s`) that inserting modules costs;
- a second method (`compare`, default `head`) stepped alternately with the first in the same
  process, so that machine load hits both alike: `step / compare`;
- inference: one window `(1, C, d, h, w)` forward, and a whole random volume `(C, D, H, W)`
  by the project's sliding-window path (`medtune.inference.sliding_window.predict_volume`:
  MONAI's `sliding_window_inference` under `torch.inference_mode`, the config's window and
  overlap, the automatic window batch, BatchNorm folded, autocast for bf16, stitching on the
  CPU as `medtune predict` does), once plainly and once with flip8 TTA; the volume is
  already in memory (file I/O and preprocessing excluded). One timed run each.

On CUDA every timed region is bracketed by `torch.cuda.synchronize`. Nothing here imports
Lightning: the loss (`medtune.training.losses.SegLoss`) and the speed switches
(`medtune.training.switches`) are training's own, from modules that import no Lightning (a test
checks that `medtune.bench` does not pull it in). MONAI is needed (the loss, the sliding
windows, and the model code itself: `medtune.modeling.decoders.unetr` imports it).
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.frozen_bn import fold_frozen_batchnorm
from medtune.modeling.layout import wants_channels_last
from medtune.modeling.model import SegModel, build_model
from medtune.modeling.params import count_parameters
from medtune.modeling.slicing import SliceContext, fold_slices
from medtune.training.config import ExperimentConfig, TrainConfig, config_from_dict
from medtune.training.losses import SegLoss
from medtune.training.optim import make_adam
from medtune.training.switches import (
    apply_activation_checkpointing,
    apply_channels_last,
    apply_compile,
    apply_frozen_batchnorm_fold,
)

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
"""`--precision` -> the `train.precision` (Lightning) name it stands for."""
CUDA_VOLUME = (155, 240, 240)
"""Default whole volume `(D, H, W)` on CUDA: the BraTS size."""
CPU_VOLUME = (48, 128, 128)
"""Default whole volume `(D, H, W)` on the CPU (about a minute for a small model)."""
DEVICES = ("auto", "cpu", "cuda")

Log = Callable[[str], None]


def log_stderr(line: str) -> None:
    """Progress line on stderr."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    """What to measure; None: the config's value (batch, crop, precision) or the device's
    default (volume)."""

    device: str = "auto"
    """`auto` (CUDA when available), `cpu` or `cuda`."""
    precision: str | None = None
    """`fp32` or `bf16`; None: the config's `train.precision` (`auto`: bf16 on CUDA)."""
    batch: int | None = None
    """Volumes per training step; None: `data.batch_size`."""
    crop: tuple[int, int, int] | None = None
    """Training crop `(D, H, W)` (also the inference window); None: `data.crop_size`."""
    steps: int = 5
    """Timed training steps of each model."""
    warmup: int = 2
    """Untimed training steps of each model first (at least 1: peak memory is read after)."""
    volume: tuple[int, int, int] | None = None
    """Whole volume `(D, H, W)`; None: `CUDA_VOLUME` / `CPU_VOLUME`, at least the window."""
    compare: str | None = "head"
    """Second tuning method stepped alternately with the config's; None: none."""
    tta: bool = True
    """Also time the volume with flip8 TTA."""
    inference: bool = True
    """Time the window forward and the volume (the suite skips them for fp32 rows)."""
    floor_s: float | None = None
    """A floor already measured (the suite measures it once per backbone and precision)."""
    floor_forward_s: float | None = None
    """Its forward alone, measured with it (reported when `floor_s` is given)."""

    def __post_init__(self) -> None:
        for flag, value, least in (("--steps", self.steps, 1), ("--warmup", self.warmup, 1)):
            if int(value) < least:
                raise MedtuneInputError(
                    f"{flag} {value}: expected at least {least} step, found {value}"
                )
        if self.batch is not None and int(self.batch) < 1:
            raise MedtuneInputError(
                f"--batch {self.batch}: expected a positive number of volumes, found {self.batch}"
            )
        for flag, size in (("--crop", self.crop), ("--volume", self.volume)):
            if size is not None and (len(size) != 3 or min(size) < 1):
                raise MedtuneInputError(
                    f"{flag} {' '.join(map(str, size))}: expected 3 positive sizes D H W, "
                    f"found {tuple(size)}"
                )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise MedtuneInputError(
                f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}, "
                f"found {self.precision!r}"
            )


# --- settings -------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else the CPU; `cuda` without CUDA raises (one line)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MedtuneInputError(
                f"--device cuda: expected a CUDA GPU, found none (torch {torch.__version__}, "
                "torch.cuda.is_available() is False); use --device cpu"
            )
        return torch.device("cuda")
    raise MedtuneInputError(
        f"--device {name}: expected one of {', '.join(DEVICES)}, found {name!r}"
    )


def resolve_precision(option: str | None, train_precision: str, device: torch.device) -> str:
    """`fp32` or `bf16`: the option, else the config's `train.precision` (`auto`: bf16 on CUDA,
    fp32 on the CPU, as training does)."""
    if option is not None:
        return option
    if train_precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    for short, name in PRECISIONS.items():
        if train_precision == name:
            return short
    raise MedtuneInputError(
        f"train.precision {train_precision}: expected auto, 32-true or bf16-mixed for bench, "
        f"found {train_precision!r}; pass --precision fp32 or --precision bf16"
    )


def with_overrides(cfg: ExperimentConfig, **sections: Any) -> ExperimentConfig:
    """A copy of `cfg` with dotted keys set (`model__method={"name": "head"}` sets
    `model.method`), validated again."""
    data = cfg.to_dict()
    for key, value in sections.items():
        node = data
        *parents, last = key.split("__")
        for k in parents:
            node = node[k]
        node[last] = value
    return config_from_dict(data)


def with_crop(cfg: ExperimentConfig, crop: tuple[int, int, int]) -> ExperimentConfig:
    """`cfg` training (and inferring) on crops `crop` `(D, H, W)`; H and W set the backbone's
    `img_size`, as `--data.crop_size` plus `--model.backbone.img_size` would."""
    d, h, w = (int(v) for v in crop)
    flag = f"--crop {d} {h} {w}"
    if h != w:
        raise MedtuneInputError(
            f"{flag}: expected square slices (H == W, the backbone's img_size), found H {h}, W {w}"
        )
    try:
        return with_overrides(cfg, data__crop_size=[d, h, w], model__backbone__img_size=h)
    except MedtuneInputError as exc:
        raise MedtuneInputError(f"{flag}: {exc}") from exc


def with_method(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """`cfg` with tuning method `method` at its defaults (an unknown name lists the known)."""
    try:
        return with_overrides(cfg, model__method={"name": method})
    except MedtuneInputError as exc:
        raise MedtuneInputError(f"--compare {method}: {exc}") from exc


def resolve_volume(
    option: tuple[int, int, int] | None, window: tuple[int, int, int], device: torch.device
) -> tuple[int, int, int]:
    """The whole volume `(D, H, W)`: the option (refused when smaller than the window along an
    axis), else the device's default grown to at least the window."""
    if option is None:
        default = CUDA_VOLUME if device.type == "cuda" else CPU_VOLUME
        return tuple(max(v, w) for v, w in zip(default, window))  # type: ignore[return-value]
    vol = tuple(int(v) for v in option)
    small = [f"{a} {v} < {w}" for a, v, w in zip("DHW", vol, window) if v < w]
    if small:
        raise MedtuneInputError(
            f"--volume {' '.join(map(str, vol))}: expected at least the window "
            f"{'x'.join(map(str, window))} along every axis, found {', '.join(small)}"
        )
    return vol  # type: ignore[return-value]


def build_on(cfg: ExperimentConfig, device: torch.device, crop_flag: str = "") -> SegModel:
    """The config's model without weights (seeded with `train.seed`) on `device`, in train
    mode; a crop the backbone cannot take raises one line (prefixed by `crop_flag`)."""
    crop = tuple(cfg.data.crop_size)
    where = crop_flag or f"data.crop_size {' '.join(map(str, crop))}"
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, load_weights=False)
    try:
        model.backbone.check_crop(crop)
    except MedtuneInputError as exc:
        raise MedtuneInputError(f"{where}: {exc}") from exc
    return model.to(device).train()


# --- peak memory ----------------------------------------------------------------------------
def _cpu_peak_kib() -> int:
    """The process's peak resident set (KiB): VmHWM, else `ru_maxrss` (KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class PeakMemory:
    """Peak memory from `start()` to `read()`, in GiB. GPU: `max_memory_allocated` after a
    reset. CPU: peak RSS now minus the peak at `start()`; the peak is first reset to the
    current RSS where Linux allows it (`/proc/self/clear_refs`), else this is the increase of
    the process's high-water mark `ru_maxrss` (0 when an earlier peak was higher)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS increase"
        self._base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self._base = _cpu_peak_kib()

    def read(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return max(0, _cpu_peak_kib() - self._base) / 2**20


# --- steps ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of `fn()`, synchronised on CUDA before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def autocast(device: torch.device, precision: str):
    """Autocast context of `precision` (`bf16`: bfloat16 autocast; `fp32`: none)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_training_model(
    model: nn.Module, train: TrainConfig, trial: torch.Tensor | None = None
) -> nn.Module:
    """The model as the training step runs it, with the config's switches applied by the
    functions training uses: `train.fold_frozen_batchnorm` (checked on the window `trial`
    `(1, C, D, H, W)`, when given), `train.channels_last`, `train.activation_checkpointing` (the backbone recomputes
    its blocks in backward) and `train.compile` (`torch.compile` in place)."""
    if trial is not None:
        apply_frozen_batchnorm_fold(model, train, trial)
    apply_channels_last(model, train, next(model.parameters()).device)
    apply_activation_checkpointing(model, train)
    apply_compile(model, train)
    return model


def make_train_step(
    model: SegModel, train: TrainConfig, x: torch.Tensor, y: torch.Tensor, precision: str
) -> Callable[[], None]:
    """One training step of `model` on the fixed batch `x` `(B, C, D, H, W)` with labels `y`
    `(B, 1, D, H, W)`: forward and loss under autocast (as Lightning's `bf16-mixed`), backward,
    Adam (the config's lr, weight decay, AMSGrad) over the trainable parameters."""
    opt = make_adam([p for p in model.parameters() if p.requires_grad], train)
    run = prepare_training_model(model, train, x[:1])
    loss_fn = SegLoss(train.loss)
    device = x.device

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn(run(x), y)
        loss.backward()
        opt.step()

    return step


def make_floor_steps(
    cfg: ExperimentConfig, x: torch.Tensor, precision: str
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(floor, floor forward). The floor: the frozen backbone of `cfg` with nothing inserted
    (method `head`), no decoder, forward over the slices of `x` `(B, C, D, H, W)` folded to
    `(B*D, C, H, W)` (a native 3D family: `x` itself), backward to that input from the sum of
    its features; its frozen BatchNorms folded as in training (`train.fold_frozen_batchnorm`).
    The floor forward: the same backbone's forward alone without gradient, i.e. what a
    head-only step runs of it; floor minus floor forward is the backward pass through the
    frozen backbone that every method inserting modules into it must add."""
    model = build_on(with_method(cfg, "head"), x.device)
    backbone = model.backbone
    del model  # the decoder goes
    backbone.requires_grad_(False)
    if cfg.train.fold_frozen_batchnorm:  # as training runs the backbone (eval-mode BNs only)
        fold_frozen_batchnorm(backbone)
    apply_channels_last(backbone, cfg.train, x.device)
    b, _, d = x.shape[:3]
    inp = backbone.pad_slices(fold_slices(x)) if backbone.folds_slices else x
    inp = inp.detach().clone().requires_grad_(True)
    device = x.device

    def step() -> None:
        inp.grad = None
        with autocast(device, precision):
            feats = backbone(inp, SliceContext(batch=b, depth=d))
        torch.stack([f.float().sum() for f in feats]).sum().backward()

    plain = inp.detach()

    def forward() -> None:
        with torch.no_grad(), autocast(device, precision):
            backbone(plain, SliceContext(batch=b, depth=d))

    return step, forward


def alternate(
    steps: dict[str, Callable[[], None]], n: int, device: torch.device, log: Log
) -> dict[str, list[float]]:
    """`n` timed rounds, each running every step once in turn; seconds per step and name."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(n):
        for name, fn in steps.items():
            times[name].append(timed(fn, device))
        log(f"round {i + 1}/{n}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    return times


# --- inference ------------------------------------------------------------------------------
def time_inference(
    model: SegModel,
    window: tuple[int, int, int],
    overlap: float,
    volume: tuple[int, int, int],
    precision: str,
    steps: int,
    tta: bool,
    log: Log,
) -> dict[str, Any]:
    """Window forward (median of `steps` after one warm-up) and whole-volume sliding-window
    inference (one run; with `tta` also flip8) of `model` in eval mode, BatchNorm folded."""
    from medtune.inference.fuse import checked_fuse
    from medtune.inference.options import auto_sw_batch_size
    from medtune.inference.sliding_window import predict_volume

    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator().manual_seed(1)
    trial = torch.randn((1, model.in_chans, *window), generator=gen).to(device)
    infer, fuse_note = checked_fuse(model, trial, channels_last=device.type == "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else None

    def window_forward() -> None:
        with torch.inference_mode(), autocast(device, precision):
            infer(trial)

    window_forward()
    window_s = statistics.median(timed(window_forward, device) for _ in range(steps))
    log(f"window {'x'.join(map(str, window))}: {window_s:.4f} s")
    image = torch.randn((model.in_chans, *volume), generator=gen)
    sw_batch = auto_sw_batch_size(window, device)
    out: dict[str, Any] = {"window_s": window_s, "sw_batch_size": sw_batch, "fuse": fuse_note}
    for key, mode in (("volume_s", "none"), ("volume_flip8_s", "flip8")):
        if mode == "flip8" and not tta:
            out[key] = None
            continue
        out[key] = timed(
            lambda mode=mode: predict_volume(
                infer,
                image,
                window=window,
                overlap=overlap,
                tta=mode,
                sw_batch_size=sw_batch,
                device=device,
                stitch_device="cpu",
                num_classes=model.num_classes,
                autocast=dtype,
            ),
            device,
        )
        log(f"volume {'x'.join(map(str, volume))} tta {mode}: {out[key]:.3f} s")
    return out


# --- the whole measurement ------------------------------------------------------------------
def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def bench_config(
    cfg: ExperimentConfig, options: BenchOptions, name: str = "", log: Log = log_stderr
) -> dict[str, Any]:
    """Measure `cfg` (see the module doc); returns one result row (keys: `RESULT_KEYS` of
    `medtune.bench.report`; seconds are medians, unrounded; None where not measured)."""
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, cfg.train.precision, device)
    crop_flag = ""
    if options.crop is not None:
        cfg = with_crop(cfg, tuple(options.crop))
        crop_flag = f"--crop {' '.join(map(str, options.crop))}"
    crop = tuple(int(v) for v in cfg.data.crop_size)
    volume = resolve_volume(options.volume, crop, device)  # type: ignore[arg-type]
    batch = int(options.batch or cfg.data.batch_size)
    method = cfg.model.method["name"]
    compare_cfg = with_method(cfg, options.compare) if options.compare else None

    mem = PeakMemory(device)
    _release(device)
    mem.start()
    log(f"{name or method}: building on {device_name(device)}, {PRECISIONS[precision]}")
    model = build_on(cfg, device, crop_flag)
    counts = count_parameters(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, model.in_chans, *crop), generator=gen).to(device)
    y = torch.randint(0, model.num_classes, (batch, 1, *crop), generator=gen).to(device)
    steps = {"step": make_train_step(model, cfg.train, x, y, precision)}
    for _ in range(options.warmup):
        timed(steps["step"], device)
    peak = mem.read()
    log(f"peak memory ({mem.kind}): {peak:.3f} GiB")
    if compare_cfg is not None:
        other = build_on(compare_cfg, device, crop_flag)
        steps["compare"] = make_train_step(other, compare_cfg.train, x, y, precision)
        del other
    if options.floor_s is None:
        steps["floor"], steps["floor_forward"] = make_floor_steps(cfg, x, precision)
    for key in [k for k in steps if k != "step"]:
        for _ in range(options.warmup):
            timed(steps[key], device)
    times = alternate(steps, options.steps, device, log)
    del steps
    _release(device)

    step_s = statistics.median(times["step"])
    floor_s = (
        statistics.median(times["floor"]) if options.floor_s is None else float(options.floor_s)
    )
    floor_fwd_s = (
        statistics.median(times["floor_forward"])
        if options.floor_s is None
        else options.floor_forward_s
    )
    compare_s = statistics.median(times["compare"]) if "compare" in times else None
    row: dict[str, Any] = {
        "config": name,
        "method": method,
        "device": device.type,
        "device_name": device_name(device),
        "precision": PRECISIONS[precision],
        "batch": batch,
        "crop": list(crop),
        "total": counts.total,
        "tuned": counts.tuned,
        "inserted": counts.inserted,
        "steps": options.steps,
        "warmup": options.warmup,
        "step_s": step_s,
        "step_min_s": min(times["step"]),
        "step_max_s": max(times["step"]),
        "floor_s": floor_s,
        "step_over_floor": step_s / floor_s,
        "floor_forward_s": floor_fwd_s,
        "floor_backward_s": None if floor_fwd_s is None else floor_s - floor_fwd_s,
        "compare": options.compare,
        "compare_step_s": compare_s,
        "step_over_compare": step_s / compare_s if compare_s else None,
        "peak_memory_gib": peak,
        "peak_memory_kind": mem.kind,
        "window": list(crop),
        "overlap": float(cfg.train.sw_overlap),
        "volume": list(volume),
        "window_s": None,
        "volume_s": None,
        "volume_flip8_s": None,
        "sw_batch_size": None,
        "fuse": None,
        "compile": bool(cfg.train.compile),
        "activation_checkpointing": bool(cfg.train.activation_checkpointing),
        "fold_frozen_batchnorm": bool(cfg.train.fold_frozen_batchnorm),
        "channels_last": wants_channels_last(cfg.train.channels_last, device),
        "optimizer_impl": cfg.train.optimizer_impl,
    }
    if options.inference:
        row.update(
            time_inference(
                model,
                crop,  # type: ignore[arg-type]
                float(cfg.train.sw_overlap),
                volume,
                precision,
                options.steps,
                options.tta,
                log,
            )
        )
    del model
    _release(device)
    return row
