"""Config fields accept only their type: one line naming the field, the type and the value."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from medtune.cli import main
from medtune.core.configbase import from_dict, to_dict
from medtune.core.errors import MedtuneInputError
from medtune.training.config import config_from_dict, load_config

SWIN = "configs/brats/swin_t_unet/med_adapter.yaml"


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "not supported between" not in err
    return err


@pytest.mark.parametrize("text", ['"false"', '"no"', "yes_please"])
def test_string_booleans_in_yaml_are_refused(tmp_path, text, capsys):
    value = text.strip('"')
    recipe = Path(SWIN).read_text()
    assert "    fourier: true " in recipe
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(recipe.replace("    fourier: true ", f"    fourier: {text} "))
    assert yaml.safe_load(cfg.read_text())["model"]["method"]["fourier"] == value  # a string
    with pytest.raises(MedtuneInputError) as exc:
        load_config(cfg)
    assert f"model.method.fourier: expected a boolean (true or false), found '{value}'" in str(
        exc.value
    )
    err = _one_line_error(["params", "--config", str(cfg)], capsys)
    assert "model.method.fourier" in err and str(cfg) in err


def test_yaml_booleans_still_work(tmp_path):
    cfg = load_config(SWIN, {"model.method.fourier": False})
    assert cfg.model.method["fourier"] is False


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--data.batch_size", "2.5", "data.batch_size: expected an integer, found 2.5"),
        ("--train.max_epochs", "1.5", "train.max_epochs: expected an integer, found 1.5"),
        ("--train.max_epochs", "five", "train.max_epochs: expected an integer, found 'five'"),
        ("--model.method.fourier", "yes_please", "model.method.fourier: expected a boolean"),
        ("--train.lr", "fast", "train.lr: expected a number, found 'fast'"),
        ("--train.devices", "1.5", "train.devices: expected an integer or a string, found 1.5"),
        ("--data.root", "[1]", "data.root: expected a string or null, found [1]"),
        ("--model.decoder.options", "[1]", "model.decoder.options: expected a mapping"),
        ("--model.backbone", "vit", "model.backbone: expected a mapping, found 'vit'"),
        ("--train.steps_per_epoch", "true", "expected an integer or null, found True"),
    ],
)
def test_wrong_types_on_the_command_line_are_one_line(flag, value, expected, capsys, tmp_path):
    err = _one_line_error(
        ["train", "--config", SWIN, "--out", str(tmp_path / "run"), flag, value], capsys
    )
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_crop_size_needs_the_yaml_list_form(capsys, tmp_path):
    argv = ["train", "--config", SWIN, "--out", str(tmp_path / "run")]
    err = _one_line_error([*argv, "--data.crop_size", "16,32,32"], capsys)
    assert "data.crop_size: expected a list of 3 integers, found '16,32,32'" in err
    assert "[16,32,32]" in err
    err = _one_line_error([*argv, "--data.crop_size", "[16,32]"], capsys)
    assert "expected a list of 3 integers, found [16, 32]" in err
    err = _one_line_error([*argv, "--data.crop_size", "[16,32.5,32]"], capsys)
    assert "found [16, 32.5, 32]" in err
    cfg = load_config(SWIN, {"data.crop_size": [16, 128, 128]})
    assert cfg.data.crop_size == (16, 128, 128)


@pytest.mark.parametrize(
    "override, allowed",
    [
        ({"train.loss": "focal"}, "train.loss: expected one of dice, dice_ce, found 'focal'"),
        ({"train.precision": 32}, "train.precision: expected one of auto, 32-true, bf16-mixed"),
        ({"model.method.inter_stage_fusion": "sum"}, "one of concat, add, max, found 'sum'"),
        ({"model.method.depth_filter": "stretch"}, "one of resample, fixed, found 'stretch'"),
        (
            {"model.method": {"name": "adapter", "act": "tanh"}},
            "model.method.act: expected one of gelu, relu, silu, none, found 'tanh'",
        ),
        ({"model.method": {"name": "st_adapter", "act": "tanh"}}, "model.method.act"),
        ({"model.method": {"name": "pro_tuning", "act": "tanh"}}, "model.method.act"),
        ({"model.method": {"name": "adaptformer", "act": "tanh"}}, "model.method.act"),
        (
            {"model.method": {"name": "adapter", "positions": ["attn", "ffn"]}},
            "model.method.positions: expected a list of values among attn, mlp",
        ),
        (
            {"model.method": {"name": "lora", "targets": ["q"]}},
            "model.method.targets: expected a list of values among qkv, proj",
        ),
    ],
)
def test_choice_fields_list_the_allowed_values(override, allowed):
    with pytest.raises(MedtuneInputError) as exc:
        load_config(SWIN, override)
    assert allowed in str(exc.value)


def test_numbers_tuples_and_unions_accept_their_types():
    cfg = load_config(
        SWIN,
        {
            "train.lr": 1,  # an int for a float field
            "train.sw_overlap": 0,
            "train.devices": 2,
            "train.precision": "bf16-mixed",
            "data.spacing": [1, 1, 2.5],
            "data.cache": None,
            "model.backbone.pretrained": "weights/swin_tiny.pth",
            "model.method.kernels": [3, 5, 7],
            "model.method.stages": None,
        },
    )
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert isinstance(cfg.train.sw_overlap, float)
    assert cfg.train.devices == 2 and cfg.data.spacing == (1.0, 1.0, 2.5)
    assert cfg.model.backbone.pretrained == "weights/swin_tiny.pth"
    assert list(cfg.model.method["kernels"]) == [3, 5, 7]
    # YAML 1.1 reads `1e-3` (no dot) as a string: a float field takes it as the number it spells
    assert load_config(SWIN, {"train.lr": "1e-3"}).train.lr == pytest.approx(1e-3)


def test_pretrained_as_a_quoted_boolean_is_refused():
    with pytest.raises(MedtuneInputError, match="model.backbone.pretrained: expected true, false"):
        load_config(SWIN, {"model.backbone.pretrained": "false"})


def test_every_shipped_config_loads_and_round_trips():
    paths = sorted(Path("configs").rglob("*.yaml"))
    assert len(paths) > 10
    for path in paths:
        cfg = load_config(path)
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
        assert to_dict(again) == to_dict(cfg), path


def test_from_dict_checks_any_config_dataclass():
    from medtune.data.config import DataConfig
    from medtune.modeling.backbones import BackboneConfig

    with pytest.raises(MedtuneInputError, match="data.flip_prob: expected a number, found 'x'"):
        from_dict(DataConfig, {"flip_prob": "x"}, "data")
    with pytest.raises(MedtuneInputError, match="backbone.in_chans: expected an integer"):
        from_dict(BackboneConfig, {"in_chans": "4"}, "backbone")
    with pytest.raises(MedtuneInputError, match="data: expected a mapping, found"):
        from_dict(DataConfig, ["crop_size"], "data")


def test_activation_names_match_the_modules():
    from medtune.modeling.methods.adapter.layer import ACTIVATIONS
    from medtune.modeling.methods.base import Activation

    assert tuple(ACTIVATIONS) == typing.get_args(Activation)
