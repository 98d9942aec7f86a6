"""The optimiser (`medtune.training.optim`): fused Adam by default where PyTorch has it, the
same updates as the per-parameter loop, resumable from a loop optimiser's state, and the
implementation named by `train.optimizer_impl` used by training and by `medtune bench`."""

from __future__ import annotations

import copy

import pytest
import torch

from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.training.config import TrainConfig
from medtune.training.optim import make_adam, optimizer_impl_of, retarget_state
from tiny import SIZE, SLICES, seeded_build, tiny_model_config, volume

_BASE = seeded_build(tiny_model_config("vit", "med_adapter"))


def _model():
    """A fresh copy of one tiny Med-Tuning ViT (the same start for every optimiser)."""
    return copy.deepcopy(_BASE)


def _label() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 3, (1, 1, SLICES, SIZE, SIZE), generator=g)


def _tuned(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-6)) for k in a)


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def test_auto_is_fused_on_the_cpu_and_each_choice_is_honoured():
    model = _model()
    params = _trainable(model)
    assert optimizer_impl_of(make_adam(params, TrainConfig())) == "fused"
    for impl in ("fused", "foreach", "for-loop"):
        opt = make_adam(params, TrainConfig(optimizer_impl=impl))
        assert optimizer_impl_of(opt) == impl
        group = opt.param_groups[0]
        assert group["amsgrad"] is True and group["lr"] == TrainConfig().lr


def _updates(params, opt, steps: int, start: int = 0) -> None:
    """`steps` optimiser updates of `params` from fixed random gradients (seeded per step), so
    that two implementations see the same gradients and only their rounding differs."""
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_fused_updates_equal_the_per_parameter_loop():
    """Med-Tuning's small tensors, AMSGrad and weight decay: 5 updates alike to 1e-5."""
    loop, fused = _model(), _model()
    loop_cfg = TrainConfig(lr=1e-2, weight_decay=1e-2, optimizer_impl="for-loop")
    _updates(_trainable(loop), make_adam(_trainable(loop), loop_cfg), 5)
    _updates(
        _trainable(fused), make_adam(_trainable(fused), TrainConfig(lr=1e-2, weight_decay=1e-2)), 5
    )
    assert _max_rel(_tuned(fused), _tuned(loop)) < 1e-5
    assert _max_rel(_tuned(fused), _tuned(_model())) > 1e-2  # they did move


def test_fused_resumes_the_state_of_a_loop_optimiser():
    """A run checkpointed before this default (per-parameter loop) resumes with fused Adam:
    its step counts and moments load, and the next updates match continuing with the loop."""
    loop_cfg = TrainConfig(lr=1e-2, optimizer_impl="for-loop")
    a = _model()
    opt_a = make_adam(_trainable(a), loop_cfg)
    _updates(_trainable(a), opt_a, 2)
    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b = make_adam(_trainable(b), TrainConfig(lr=1e-2))
    saved = copy.deepcopy(opt_a.state_dict())  # as read back from a checkpoint file
    retarget_state(saved, _trainable(b), "auto")  # what training's on_load_checkpoint does
    opt_b.load_state_dict(saved)
    assert optimizer_impl_of(opt_b) == "fused"
    fresh = _model()
    fresh.load_state_dict(a.state_dict())
    _updates(_trainable(fresh), make_adam(_trainable(fresh), TrainConfig(lr=1e-2)), 3, start=2)
    _updates(_trainable(a), opt_a, 3, start=2)
    _updates(_trainable(b), opt_b, 3, start=2)
    assert _max_rel(_tuned(b), _tuned(a)) < 1e-5
    assert _max_rel(_tuned(fresh), _tuned(a)) > 1e-2  # the loaded moments mattered
    assert all(float(s["step"]) == 5 for s in opt_b.state.values())


def test_parameters_fused_adam_cannot_take_fall_back_or_fail_in_one_line():
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert optimizer_impl_of(make_adam(meta, TrainConfig())) != "fused"
    with pytest.raises(
        MedtuneInputError, match=r"optimizer_impl fused: .*found a parameter on meta"
    ):
        make_adam(meta, TrainConfig(optimizer_impl="fused"))
    with pytest.raises(MedtuneInputError, match="expected trainable parameters, found none"):
        make_adam([], TrainConfig())


def test_an_unknown_implementation_is_refused_by_the_config():
    with pytest.raises(MedtuneInputError, match=r"optimizer_impl.*fast"):
        from_dict(TrainConfig, {"optimizer_impl": "fast"}, "train")


def test_training_runs_the_configured_optimiser(engine_data, tmp_path):
    """One epoch of `medtune train`'s engine: its optimiser is the one the config names."""
    import lightning.pytorch as pl

    from medtune.training.run import train_run
    from tiny import tiny_experiment

    seen = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.extend(optimizer_impl_of(o) for o in trainer.optimizers)

    for impl in ("auto", "for-loop"):
        _, cfg = tiny_experiment(
            engine_data, train__max_epochs=1, train__steps_per_epoch=1, train__optimizer_impl=impl
        )
        summary = train_run(cfg, tmp_path / impl, callbacks=[Record()])
        assert summary["global_step"] == 1
    assert seen == ["fused", "for-loop"]


def test_a_resumed_run_takes_the_configured_implementation(engine_data, tmp_path):
    """A run trained with the loop, resumed with `train.optimizer_impl auto`: Lightning
    restores the saved state into fused Adam (step counts and all)."""
    import lightning.pytorch as pl

    from medtune.training.run import load_run_config, train_run
    from tiny import tiny_experiment

    seen = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # after the checkpoint is restored
            opt = trainer.optimizers[0]
            seen.append(
                (optimizer_impl_of(opt), sorted({float(s["step"]) for s in opt.state.values()}))
            )

    _, cfg = tiny_experiment(
        engine_data, train__max_epochs=1, train__steps_per_epoch=1, train__optimizer_impl="for-loop"
    )
    out = tmp_path / "run"
    train_run(cfg, out)
    again = load_run_config(out, {"train.max_epochs": 2, "train.optimizer_impl": "auto"})
    summary = train_run(again, out, resume=True, callbacks=[Record()])
    assert summary["resumed"] and summary["global_step"] == 2
    assert seen == [("fused", [1.0])]


def test_bench_steps_with_the_configured_optimiser(monkeypatch):
    import medtune.bench.measure as measure
    from medtune.training import optim

    built = []

    def spy(params, train):
        opt = optim.make_adam(params, train)
        built.append(optimizer_impl_of(opt))
        return opt

    monkeypatch.setattr(measure, "make_adam", spy)
    for impl in ("auto", "foreach"):
        model = _model()
        step = measure.make_train_step(
            model, TrainConfig(optimizer_impl=impl), volume(), _label(), "fp32"
        )
        before = _tuned(model)
        step()
        assert _max_rel(_tuned(model), before) > 0
    assert built == ["fused", "foreach"]
