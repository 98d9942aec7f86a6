"""The optimiser of training and of `medtune bench`: Adam (AMSGrad, as the paper) with weight
decay over the trainable parameters, in the implementation `train.optimizer_impl` names.

PyTorch's Adam has three implementations of the same update: `for-loop` (one set of tensor
ops per parameter), `foreach` (the ops batched over parameter lists) and `fused` (one kernel
for the whole update, on CPU and CUDA since torch 2.4). They differ only in floating-point
rounding. Tuning methods train hundreds of small tensors (Med-Tuning on ViT-B: 290), where the
per-parameter loop is dominated by op overhead: on this project's 2-core CPU, 288 adapter-sized
tensors took 33.7 ms per step with the loop, 45.4 ms with `foreach` and 13.3 ms `fused`
(docs/performance.md). `auto` therefore takes `fused` whenever every trainable parameter is a
floating-point tensor on the CPU or a CUDA device, else PyTorch's own default.

Lightning-free: `medtune.training.module` and `medtune.bench` both build their optimiser here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medtune.core.errors import MedtuneInputError
from medtune.training.config import TrainConfig

FUSED_DEVICES = ("cpu", "cuda")
"""Device types of PyTorch's fused Adam."""


def fused_unsupported(params: Sequence[torch.Tensor]) -> str | None:
    """Why the fused Adam cannot update `params` (a short phrase), or None when it can."""
    for p in params:
        if p.device.type not in FUSED_DEVICES:
            return (
                f"a parameter on {p.device.type} (fused Adam runs on {' and '.join(FUSED_DEVICES)})"
            )
        if not p.is_floating_point():
            return f"a parameter of dtype {p.dtype} (fused Adam needs floating point)"
    return None


def optimizer_kwargs(params: Sequence[torch.Tensor], impl: str) -> dict[str, bool]:
    """`torch.optim.Adam` keyword arguments selecting implementation `impl` for `params`."""
    if impl == "auto":
        return {"fused": True} if fused_unsupported(params) is None else {}
    if impl == "fused":
        reason = fused_unsupported(params)
        if reason is not None:
            raise MedtuneInputError(
                f"train.optimizer_impl fused: expected every trainable parameter as a floating "
                f"point tensor on {' or '.join(FUSED_DEVICES)}, found {reason}; "
                "use train.optimizer_impl auto"
            )
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "for-loop":
        return {"foreach": False}
    raise MedtuneInputError(
        f"train.optimizer_impl: expected auto, fused, foreach or for-loop, found {impl!r}"
    )


def implementation_flags(params: Sequence[torch.Tensor], impl: str) -> dict[str, bool | None]:
    """The `fused` and `foreach` entries of an Adam param group for `impl` (None: PyTorch's
    default), as `torch.optim.Adam(params, **optimizer_kwargs(params, impl))` stores them."""
    kwargs = optimizer_kwargs(params, impl)
    return {"fused": kwargs.get("fused"), "foreach": kwargs.get("foreach")}


def retarget_state(state: dict, params: Sequence[torch.Tensor], impl: str) -> None:
    """Rewrite the implementation flags of a saved Adam `state` (an `optimizer.state_dict()`,
    as in a trainer checkpoint) to `impl`, in place. `Optimizer.load_state_dict` takes the
    param groups' flags from the saved state, so without this a run checkpointed with one
    implementation would resume with it whatever the config says; with the flags rewritten
    the loaded step counts are also placed as the fused kernel needs them (on the
    parameter's device). Moments and step counts are the same in every implementation."""
    flags = implementation_flags(params, impl)
    for group in state.get("param_groups", []):
        group.update(flags)


def make_adam(params: Sequence[torch.Tensor], train: TrainConfig) -> torch.optim.Adam:
    """Adam over `params` (the trainable parameters) with the config's lr, weight decay and
    AMSGrad, implemented as `train.optimizer_impl` says; no parameters raises one line."""
    params = list(params)
    if not params:
        raise MedtuneInputError(
            "model: expected trainable parameters, found none (check model.method)"
        )
    return torch.optim.Adam(
        params,
        lr=train.lr,
        weight_decay=train.weight_decay,
        amsgrad=train.amsgrad,
        **optimizer_kwargs(params, train.optimizer_impl),
    )


def optimizer_impl_of(opt: torch.optim.Optimizer) -> str:
    """The implementation an Adam built by `make_adam` runs: fused, foreach or for-loop
    (PyTorch's default, `foreach=None`, is foreach on CUDA and the loop on the CPU)."""
    group = opt.param_groups[0]
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None:
        foreach = all(p.device.type == "cuda" for g in opt.param_groups for p in g["params"])
    return "foreach" if foreach else "for-loop"
