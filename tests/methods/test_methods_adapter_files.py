"""Adapter-only files: contents, no pickle, half precision, and refusal of tampered, corrupt,
incomplete or mismatched files with a clear, one-line message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from methods_helpers import config_dict, perturb_tuned
from safetensors.torch import load_file, save_file

from medtune.artifacts.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    _file_sha256,
    adapter_tensor_names,
    backbone_hash,
    load_adapter,
    save_adapter,
)
from medtune.core.errors import MedtuneInputError
from tiny import seeded_build, tiny_model_config, volume


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking `adapter` model on the tiny ViT, its config, output and folder."""
    cfg = tiny_model_config("vit", "adapter")
    model = seeded_build(cfg)
    perturb_tuned(model)
    model.eval()
    x = volume()
    with torch.no_grad():
        ref = model(x)
    out = save_adapter(
        model,
        tmp_path_factory.mktemp("ad") / "brats",
        config_dict(cfg),
        extra={"labels": {"0": "background"}},
    )
    return cfg, model, x, ref, out


def _copy(saved, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(saved[4], dst)
    return dst


def _rewrite_tensors(folder, tensors):
    """Write a consistent but edited tensor file (checksum updated) to test content checks."""
    save_file(tensors, str(folder / WEIGHTS_NAME))
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["weights"]["sha256"] = _file_sha256(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


def test_files_hold_only_the_trained_tensors(saved):
    cfg, model, _, _, out = saved
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    raw = (out / WEIGHTS_NAME).read_bytes()
    assert raw[8:9] == b"{", "safetensors: 8-byte header length then JSON, never pickle"
    tensors = load_file(str(out / WEIGHTS_NAME))
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert tuned <= set(tensors)
    assert not any(k.startswith("backbone.model.blocks.0.attn.wrapped.") for k in tensors)
    bn = [k for k in tensors if k.endswith("running_mean")]
    assert bn and all(k.startswith("decoder.") for k in bn)  # decoder BN statistics saved
    assert set(tensors) == set(adapter_tensor_names(model))
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["method"]["name"] == "adapter" and meta["method"]["reduction"] == 8
    assert meta["model"]["backbone"]["name"] == "vit_test"
    assert meta["model"]["num_classes"] == 3
    assert meta["backbone_sha256"] == backbone_hash(model)
    assert meta["whole_model"] is False
    assert meta["parameters"]["inserted"] == sum(
        p.numel() for n, p in model.named_parameters() if n in model.inserted_names
    )
    assert meta["extra"] == {"labels": {"0": "background"}}
    assert "medtune_version" in meta
    assert not list(out.glob(".*tmp"))


def test_backbone_hash_ignores_method_wrappers(saved):
    cfg = saved[0]
    hashes = {
        m: backbone_hash(seeded_build(tiny_model_config("vit", m)))
        for m in ("head", "lora", "vpt_shallow")
    }
    hashes["adapter"] = backbone_hash(saved[1])
    assert len(set(hashes.values())) == 1, hashes
    assert backbone_hash(seeded_build(cfg, seed=5)) != hashes["head"]


def test_half_precision_storage_loads(saved, tmp_path):
    cfg, model, x, ref, _ = saved
    out = save_adapter(model, tmp_path / "half", config_dict(cfg), half=True)
    tensors = load_file(str(out / WEIGHTS_NAME))
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    size_half = (out / WEIGHTS_NAME).stat().st_size
    assert size_half < 0.6 * (saved[4] / WEIGHTS_NAME).stat().st_size
    fresh = load_adapter(out, seeded_build(cfg)).eval()
    assert next(fresh.decoder.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref, atol=2e-2, rtol=2e-2)


def test_mismatched_backbone_refused_unless_overridden(saved):
    cfg, _, x, ref, out = saved
    other = seeded_build(cfg, seed=5)
    with pytest.raises(MedtuneInputError) as err:
        load_adapter(out, other)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(out / CONFIG_NAME) in msg
    assert saved[1] is not other
    assert backbone_hash(saved[1]) in msg and backbone_hash(other) in msg
    assert "allow_backbone_mismatch" in msg
    load_adapter(out, other, allow_backbone_mismatch=True)  # explicit override loads
    with torch.no_grad():
        assert not torch.equal(other.eval()(x), ref)


def test_tampered_bytes_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    raw = bytearray((folder / WEIGHTS_NAME).read_bytes())
    raw[-3] ^= 0xFF
    (folder / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(
        MedtuneInputError, match="does not match .* the file was changed or is corrupt"
    ):
        load_adapter(folder, seeded_build(saved[0]))


def test_corrupt_header_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["weights"]["sha256"] = _file_sha256(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(MedtuneInputError, match="cannot read safetensors"):
        load_adapter(folder, seeded_build(saved[0]))


def test_missing_unexpected_and_misshapen_tensors_refused(saved, tmp_path):
    cfg = saved[0]
    folder = _copy(saved, tmp_path)
    tensors = load_file(str(saved[4] / WEIGHTS_NAME))
    dropped = next(k for k in tensors if ".adapter.down.weight" in k)
    _rewrite_tensors(folder, {k: v for k, v in tensors.items() if k != dropped})
    with pytest.raises(MedtuneInputError, match=f"missing 1 tensor\\(s\\): {dropped}"):
        load_adapter(folder, seeded_build(cfg))
    _rewrite_tensors(folder, {**tensors, "backbone.model.blocks.0.evil": torch.zeros(1)})
    with pytest.raises(MedtuneInputError, match="unexpected 1 tensor"):
        load_adapter(folder, seeded_build(cfg))
    _rewrite_tensors(folder, {**tensors, dropped: torch.zeros(2, 2)})
    with pytest.raises(MedtuneInputError, match=f"tensor {dropped} has shape \\(2, 2\\)"):
        load_adapter(folder, seeded_build(cfg))


def test_missing_files_and_wrong_method_refused(saved, tmp_path):
    cfg = saved[0]
    folder = _copy(saved, tmp_path)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(MedtuneInputError, match="adapter weights file is missing"):
        load_adapter(folder, seeded_build(cfg))
    with pytest.raises(MedtuneInputError, match="no adapter config here"):
        load_adapter(tmp_path / "nowhere")
    (folder / CONFIG_NAME).write_text("{broken")
    with pytest.raises(MedtuneInputError, match="not valid JSON"):
        load_adapter(folder)
    with pytest.raises(MedtuneInputError, match="trained with method"):
        load_adapter(saved[4], seeded_build(tiny_model_config("vit", "lora")))


def test_model_none_builds_from_saved_config(saved, tmp_path):
    # `full`: the adapter is the whole model, nothing frozen: loads without backbone weights.
    cfg = tiny_model_config("vit", "full")
    model = seeded_build(cfg, seed=7)
    perturb_tuned(model)
    x = volume()
    with torch.no_grad():
        ref = model.eval()(x)
    out = save_adapter(model, tmp_path / "full", config_dict(cfg))
    assert json.loads((out / CONFIG_NAME).read_text())["whole_model"] is True
    loaded = load_adapter(out).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    # A frozen backbone that the config cannot reproduce (random, no weights) is refused.
    with pytest.raises(MedtuneInputError, match="backbone weights differ"):
        load_adapter(saved[4])


def test_save_rejects_wrong_config(saved, tmp_path):
    cfg = tiny_model_config("vit", "head")
    with pytest.raises(MedtuneInputError, match="names method 'head'"):
        save_adapter(saved[1], tmp_path / "x", config_dict(cfg))
