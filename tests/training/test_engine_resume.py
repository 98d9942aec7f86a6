"""Resume after SIGKILL: in mid-epoch between two steps, and while a checkpoint is written.

Each killed run is a real subprocess that sends SIGKILL to itself at the chosen point (test
hooks: an extra Lightning callback, or `AtomicCheckpointIO.before_rename`). Resuming must end
with exactly the adapter weights of an uninterrupted run with the same seed (CPU,
deterministic mode).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtune.training.run import load_run_config, train_run

# 2 epochs of 3 steps; trainer state every 2 steps and at epoch ends: saves after steps
# 2 (mid-epoch 1), 3 (end of epoch 1), 4 (mid-epoch 2), 6 (end of epoch 2).
RESUME = {"train__checkpoint_every_n_steps": 2, "train__steps_per_epoch": 3}

SCRIPT = """
import os, signal, sys
import lightning.pytorch as pl
from medtune.training.config import load_config
from medtune.training.checkpoint import AtomicCheckpointIO
from medtune.training.run import train_run

cfg_path, out, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class KillBetweenSteps(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == n:  # n steps done, step n+1 not started
            die()

calls = []
def before_rename(self, tmp, path):  # the temporary file is complete, the rename not done
    calls.append(str(tmp))
    if len(calls) == n:
        die()

callbacks = []
if mode == "steps":
    callbacks.append(KillBetweenSteps())
else:
    AtomicCheckpointIO.before_rename = before_rename
train_run(load_config(cfg_path), out, callbacks=callbacks)
print("not killed")
"""


def _tensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "adapter_model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def reference(engine_data, tmp_path_factory):
    """The uninterrupted run."""
    from tiny import tiny_experiment

    _, cfg = tiny_experiment(engine_data, **RESUME)
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = train_run(cfg, out)
    assert summary["global_step"] == 6
    return out, summary


def _killed_run(make_config, tmp_path: Path, mode: str, n: int) -> Path:
    cfg_path, _ = make_config(**RESUME)
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(cfg_path), str(out), mode, str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    return out


def _resume(out: Path) -> dict:
    return train_run(load_run_config(out), out, resume=True)


def _ckpt_step(out: Path) -> int:
    ckpt = torch.load(out / "trainer_state" / "last.ckpt", weights_only=True, map_location="cpu")
    return int(ckpt["global_step"])


@pytest.mark.slow
def test_resume_after_kill_between_steps_mid_epoch(reference, make_config, tmp_path):
    ref, ref_summary = reference
    out = _killed_run(make_config, tmp_path, "steps", 4)
    assert _ckpt_step(out) == 4  # mid-epoch 2: one of its three batches done
    assert not (out / "train_summary.json").exists()
    summary = _resume(out)
    assert summary["resumed"] and summary["global_step"] == 6 and summary["epochs"] == 2
    _assert_same(_tensors(out, "adapter_last"), _tensors(ref, "adapter_last"))
    _assert_same(_tensors(out, "adapter"), _tensors(ref, "adapter"))
    assert summary["history"] == ref_summary["history"]
    assert summary["best"] == ref_summary["best"]


@pytest.mark.slow
def test_resume_after_kill_while_writing_checkpoint(reference, make_config, tmp_path):
    ref, ref_summary = reference
    # The third save (after step 4) is killed after its temporary file is complete.
    out = _killed_run(make_config, tmp_path, "write", 3)
    left = list((out / "trainer_state").glob(".tmp-*"))
    assert len(left) == 1 and left[0].stat().st_size > 0
    assert _ckpt_step(out) == 3  # the previous complete checkpoint (end of epoch 1)
    summary = _resume(out)
    assert not list(out.rglob(".tmp-*"))
    assert summary["resumed"] and summary["global_step"] == 6
    _assert_same(_tensors(out, "adapter_last"), _tensors(ref, "adapter_last"))
    _assert_same(_tensors(out, "adapter"), _tensors(ref, "adapter"))
    assert summary["history"] == ref_summary["history"]


def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    import shutil

    ref, _ = reference
    out = Path(shutil.copytree(ref, tmp_path / "copy"))
    before = _tensors(out, "adapter_last")
    cfg = load_run_config(out)
    summary = train_run(cfg, out, resume=True)
    assert summary["global_step"] == 6
    _assert_same(_tensors(out, "adapter_last"), before)


# One tiny model of every backbone family, with the decoder its paper configs use.
FAMILY_MODELS = {
    "vit": {"model.backbone.name": "vit_test"},
    "swin": {
        "model.backbone.name": "swin_test",
        "model.backbone.timm_kwargs": {},
        "model.decoder": {"name": "swin_unet", "options": {"depth": 2}},
    },
    "cnn": {
        "model.backbone.name": "cnn_test",
        "model.backbone.timm_kwargs": {},
        "model.decoder": {"name": "unet", "options": {"channels": [16, 16, 16, 16]}},
    },
}


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_finished_run_of_every_family_extends_by_one_epoch(engine_data, tmp_path, family):
    from tiny import tiny_experiment

    overrides = {k.replace(".", "__"): v for k, v in FAMILY_MODELS[family].items()}
    _, cfg = tiny_experiment(
        engine_data, train__max_epochs=1, train__steps_per_epoch=2, **overrides
    )
    out = tmp_path / "run"
    first = train_run(cfg, out)
    assert first["epochs"] == 1 and first["global_step"] == 2
    before = _tensors(out, "adapter_last")
    summary = train_run(load_run_config(out, {"train.max_epochs": 2}), out, resume=True)
    assert summary["resumed"]
    assert summary["epochs"] == 2 and summary["global_step"] == 4
    after = _tensors(out, "adapter_last")
    assert sorted(after) == sorted(before)
    assert any(not torch.equal(after[k], before[k]) for k in after)  # epoch 2 trained


# --- SIGTERM / SIGINT: a real signal, sent by the training process to itself after n steps ---

SIGNAL_SCRIPT = """
import os, signal, sys
import lightning.pytorch as pl
import medtune.training.run as run
from medtune.cli import main

cfg_path, out, signame, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# As in a terminal: a shell's background job (e.g. a CI runner started with `&`) inherits
# SIGINT ignored, and medtune then rightly leaves Ctrl-C alone.
signal.signal(signal.SIGINT, signal.default_int_handler)

class SendSignal(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == n:  # n steps done; the signal arrives as step n+1 starts
            os.kill(os.getpid(), getattr(signal, signame))

train_run = run.train_run
run.train_run = lambda cfg, out, resume=False, callbacks=None: train_run(
    cfg, out, resume, [SendSignal()]
)
sys.exit(main(["train", "--config", cfg_path, "--out", out]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_mid_epoch_checkpoints_says_how_to_resume_and_resumes(
    reference, make_config, tmp_path, signame, code, capsys
):
    from medtune.cli import main

    ref, ref_summary = reference
    cfg_path, _ = make_config(**RESUME)
    script = tmp_path / "signalled.py"
    script.write_text(textwrap.dedent(SIGNAL_SCRIPT))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(cfg_path), str(out), signame, "4"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == code, proc.stdout + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medtune train: stopped by {signame} at step 5;"), last
    assert (
        f"the trainer state of step 5 is saved; continue with: medtune train --resume {out}" in last
    )
    assert "trained" not in proc.stdout  # no summary line: the run did not finish
    # Step 5 (mid-epoch 2, not a periodic save: those are 2, 3, 4, 6) was written at the stop.
    assert _ckpt_step(out) == 5
    assert not (out / "train_summary.json").exists() and not list(out.rglob(".tmp-*"))
    assert main(["train", "--resume", str(out)]) == 0
    assert "trained 2 epoch(s), 6 steps" in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] and summary["resumed_from_step"] == 5
    _assert_same(_tensors(out, "adapter_last"), _tensors(ref, "adapter_last"))
    _assert_same(_tensors(out, "adapter"), _tensors(ref, "adapter"))
    assert summary["history"] == ref_summary["history"]
    # the log holds every step once: 0..5 from the stopped run, then 5.. from the resumed one
    with open(out / "logs" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert steps == list(range(6))
