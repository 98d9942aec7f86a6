"""The training step's speed and memory properties, at tiny size on the CPU: frozen modules get
no weight gradients, attention runs through the fused SDPA kernel, no host synchronisation in
a step, pinned batches on CUDA only, and the opt-in switches `train.compile` and
`train.activation_checkpointing` (same loss and gradients as without them)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from medtune.core.errors import MedtuneInputError
from medtune.training.config import TrainConfig
from medtune.training.datamodule import pin_memory_for, train_loader
from medtune.training.module import SegLoss, SegTrainModule
from medtune.training.run import train_run
from tiny import SIZE, SLICES, seeded_build, tiny_experiment, tiny_model_config, volume


def _label(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (1, 1, SLICES, SIZE, SIZE), generator=g)


def _step(model, x, label, seed: int = 0):
    """One forward and backward in training mode; returns (loss, tuned grads, buffers, bytes
    of the tensors autograd kept outside checkpointed regions)."""
    model.train()
    model.zero_grad(set_to_none=True)
    kept = [0]

    def pack(t):
        kept[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(seed)  # dropout draws the same numbers in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = SegLoss("dice_ce")(model(x), label)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers, kept[0]


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """Largest difference relative to the largest value of `b` (at least `floor`)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


@pytest.mark.parametrize("family", ["vit", "swin", "cnn"])
def test_activation_checkpointing_keeps_loss_gradients_and_running_stats(family):
    plain = seeded_build(tiny_model_config(family, "med_adapter"))
    ckpt = copy.deepcopy(plain)
    ckpt.backbone.set_activation_checkpointing(True)
    x, label = volume(), _label()
    loss0, grads0, bufs0, kept0 = _step(plain, x, label)
    loss1, grads1, bufs1, kept1 = _step(ckpt, x, label)
    assert _rel(loss1, loss0) <= 1e-5
    tuned = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert set(grads0) == set(grads1) and set(grads0) <= tuned and len(grads0) > 0
    for n in grads0:
        assert _rel(grads1[n], grads0[n]) <= 1e-5, n
    # trainable BatchNorm layers (the adapters') are updated once, not again by the recompute
    assert any(isinstance(m, _BatchNorm) and m.training for m in ckpt.modules())
    for n in bufs0:
        assert torch.equal(bufs0[n], bufs1[n]), n
    assert kept1 < kept0  # the blocks' activations are not kept
    # evaluation and no-grad passes are not checkpointed and unchanged
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), ckpt(x))


def test_activation_checkpointing_can_be_turned_off_again():
    model = seeded_build(tiny_model_config("cnn", "med_adapter"))
    units = model.backbone.checkpoint_units()
    assert units and all("." in u or u.startswith(("layer", "s")) for u in units)
    model.backbone.set_activation_checkpointing(True)
    assert all("forward" in model.backbone.model.get_submodule(u).__dict__ for u in units)
    model.backbone.set_activation_checkpointing(False)
    assert not any("forward" in model.backbone.model.get_submodule(u).__dict__ for u in units)


@pytest.mark.parametrize(
    "family, method",
    [("vit", "med_adapter"), ("vit", "head"), ("vit", "lora"), ("swin", "vpt_deep")],
)
def test_frozen_parameters_get_no_gradients(family, method):
    model = seeded_build(tiny_model_config(family, method))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and tuned
    _, grads, _, _ = _step(model, volume(), _label())
    assert set(grads) <= tuned  # autograd computed no weight gradient of a frozen module
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert len(grads) >= 0.9 * len(tuned)  # (a first adapter's inter-stage input may be unused)


@pytest.mark.parametrize(
    "family, method",
    [
        ("vit", "med_adapter"),
        ("vit", "lora"),
        ("vit", "vpt_deep"),
        ("swin", "med_adapter"),
        ("swin", "vpt_deep"),
    ],
)
def test_attention_runs_through_fused_sdpa(family, method, monkeypatch):
    model = seeded_build(tiny_model_config(family, method))
    attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attns and all(m.fused_attn for m in attns)
    calls = [0]
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model.train()
    model(volume()).sum().backward()
    assert calls[0] == len(model.backbone.transformer_blocks())


def test_a_training_step_does_not_synchronise_with_the_host(monkeypatch):
    """Between two loss checks a step reads no floating-point tensor back (`.item()`,
    `bool(t)`, `float(t)`, `.tolist()`, `.cpu()`); integer index tensors (MONAI's Dice builds
    its reduction axes with `torch.arange(...).tolist()`) live on the CPU, not the device."""
    model = seeded_build(tiny_model_config("vit", "med_adapter"))
    module = SegTrainModule(model, TrainConfig(log_every_n_steps=10), (SLICES, SIZE, SIZE), {})
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = {"image": volume(), "label": _label()[:, 0]}
    reads: list[str] = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if self.is_floating_point():
                reads.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for i in range(3):
        module.training_step(batch, i).backward()
    assert reads == []
    module.check_finite_losses()  # one read (of a bool tensor) for all pending losses
    batch["image"][0, 0, 0, 0, 0] = float("nan")
    module.training_step(batch, 3)
    with pytest.raises(
        MedtuneInputError, match=r"found nan at epoch 1, batch 4 \(optimiser step 1\)"
    ):
        module.check_finite_losses()


class PoisonBatch(pl.Callback):
    """Puts one NaN into the first batch of the second epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            batch["image"][0, 0, 0, 0, 0] = float("nan")


def test_a_late_loss_check_still_stops_before_anything_is_written(engine_data, tmp_path):
    """With checks every 100 batches, a NaN in epoch 2 is found at the epoch's end, before its
    validation or checkpoint: the folder keeps epoch 1's finite checkpoint."""
    _, cfg = tiny_experiment(engine_data, train__log_every_n_steps=100)
    run = tmp_path / "run"
    with pytest.raises(
        MedtuneInputError, match=r"^train: expected a finite loss, found nan at epoch 2, batch 1 "
    ):
        train_run(cfg, run, callbacks=[PoisonBatch()])
    state = torch.load(run / "trainer_state/last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == 3
    assert all(
        torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()
    )


def test_pinned_memory_only_on_cuda():
    assert pin_memory_for("cpu") is False
    assert pin_memory_for("gpu") is True and pin_memory_for("cuda") is True
    assert pin_memory_for("auto") is torch.cuda.is_available()
    ds = list(range(4))
    assert train_loader(ds, 2, 0, 0, pin_memory=True).pin_memory is True
    assert train_loader(ds, 2, 0, 0).pin_memory is False


def test_switch_values_are_checked():
    assert TrainConfig().compile is False and TrainConfig().activation_checkpointing is False
    with pytest.raises(
        MedtuneInputError,
        match=r"train.compile_backend: expected one of .*inductor.*found 'inducter'",
    ):
        TrainConfig(compile=True, compile_backend="inducter")
    with pytest.raises(MedtuneInputError, match="train.compile_backend"):
        TrainConfig(compile_backend=" ")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_step_matches_eager(checkpointing):
    """`torch.compile` (backend aot_eager: inductor works too but compiles for minutes on a
    contended 2-core CPU), also with activation checkpointing inside the compiled graph, gives
    the eager loss, gradients and BatchNorm statistics; names stay those of eager."""
    eager = seeded_build(tiny_model_config("vit", "med_adapter"))
    for m in eager.modules():  # dropout is drawn differently inside compiled graphs
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    compiled = copy.deepcopy(eager)
    compiled.backbone.set_activation_checkpointing(checkpointing)
    compiled.compile(backend="aot_eager")
    x, label = volume(), _label()
    loss0, grads0, bufs0, _ = _step(eager, x, label)
    loss1, grads1, bufs1, _ = _step(compiled, x, label)
    assert _rel(loss1, loss0) <= 1e-5
    assert set(grads1) == set(grads0)
    # biases before a BatchNorm have gradients that are 0 up to rounding (1e-9): compared
    # against a thousandth of the largest gradient of the model instead of their own size
    floor = 1e-3 * max(float(g.abs().max()) for g in grads0.values())
    assert max(_rel(grads1[n], grads0[n], floor) for n in grads0) <= 1e-3
    for n in bufs0:  # updated once, not again by a recomputation
        assert torch.allclose(bufs1[n].double(), bufs0[n].double(), rtol=1e-4, atol=1e-6), n
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]


@pytest.mark.slow
def test_one_epoch_with_compile_and_activation_checkpointing(engine_data, tmp_path):
    _, cfg = tiny_experiment(
        engine_data,
        train__max_epochs=1,
        train__compile=True,
        train__compile_backend="aot_eager",
        train__activation_checkpointing=True,
    )
    summary = train_run(cfg, tmp_path / "run")
    assert summary["epochs"] == 1 and summary["global_step"] == 3
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in summary["history"])
    assert (tmp_path / "run/adapter/adapter_model.safetensors").is_file()


@pytest.mark.parametrize("fold", [True, False])
def test_training_folds_the_frozen_batchnorms_of_a_cnn_and_says_so(
    engine_data, tmp_path, capsys, fold
):
    from medtune.modeling.frozen_bn import FoldedConvForward

    _, cfg = tiny_experiment(
        engine_data,
        train__max_epochs=1,
        train__steps_per_epoch=1,
        train__fold_frozen_batchnorm=fold,
        **{
            "model__backbone__name": "cnn_test",
            "model__backbone__timm_kwargs": {},
            "model__decoder": {"name": "unet", "options": {"channels": [16, 16, 16, 16]}},
        },
    )
    seen, layouts = [], []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            backbone = pl_module.model.backbone
            modules = list(backbone.modules())
            seen.append(
                sum(isinstance(m.__dict__.get("forward"), FoldedConvForward) for m in modules)
            )
            convs = [m for m in modules if isinstance(m, torch.nn.Conv2d)]
            layouts.append(
                [c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs]
            )

    summary = train_run(cfg, tmp_path / "run", callbacks=[Record()])
    assert summary["global_step"] == 1
    err = capsys.readouterr().err
    # the frozen convs train channels-last on the CPU (train.channels_last: automatic)
    assert layouts[0] and all(layouts[0])
    if fold:
        assert seen[0] > 0
        assert f"model: folded {seen[0]} frozen BatchNorm(s) into their convs for training" in err
    else:
        assert seen == [0] and "model: frozen BatchNorm fold off" in err
