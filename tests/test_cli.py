"""The command line: every subcommand answers -h; `medtune params` reproduces the paper's counts."""

from __future__ import annotations

import json

import pytest

from medtune.cli import build_parser, main

PAPER = {  # (total, tuned, inserted) in millions, paper Tables 1-3 and 9
    "configs/brats/vit_b16_upernet/full.yaml": (100.849, 100.849, 0.0),
    "configs/brats/vit_b16_upernet/head.yaml": (100.849, 15.007, 0.0),
    "configs/brats/vit_b16_upernet/med_adapter.yaml": (103.695, 17.853, 2.846),
    "configs/brats/swin_t_unet/full.yaml": (27.154, 27.154, 0.0),
    "configs/brats/swin_t_unet/head.yaml": (27.154, 6.752, 0.0),
    "configs/brats/swin_t_unet/med_adapter.yaml": (None, 7.489, 0.738),
    "configs/ablations/swin_t_unet/alpha2.yaml": (None, 10.064, 3.313),
    "configs/ablations/swin_t_unet/alpha4.yaml": (None, 7.994, 1.243),
    "configs/ablations/swin_t_unet/alpha8.yaml": (None, 7.271, 0.520),
}


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_subcommand_has_help(capsys):
    names = _subcommands()
    assert "params" in names
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "-h"])
        assert exc.value.code == 0
        assert f"usage: medtune {name}" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(PAPER))
def test_params_json_matches_paper(config, capsys):
    assert main(["params", "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds only JSON
    assert set(out) == {"total", "tuned", "inserted"} and all(
        isinstance(v, int) for v in out.values()
    )
    total, tuned, inserted = PAPER[config]
    if total is not None:
        assert round(out["total"] / 1e6, 3) == total
    assert round(out["tuned"] / 1e6, 3) == tuned
    assert round(out["inserted"] / 1e6, 3) == inserted


def test_params_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: {name: vit_nonsense}\n")
    assert main(["params", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "unknown backbone 'vit_nonsense'" in err and str(bad) in err
    )
    assert main(["params", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad.write_text("model:\n  method: {name: med_adapter, alpha: 6, bogus: 1}\n")
    assert main(["params", "--config", str(bad)]) == 2
    assert "unknown field(s) bogus" in capsys.readouterr().err
    bad.write_text("model:\n  method: {name: nothing}\n")
    assert main(["params", "--config", str(bad)]) == 2
    assert "unknown tuning method 'nothing'; known:" in capsys.readouterr().err


def test_params_all_prints_paths_as_given(capsys):
    assert main(["params", "--all", "configs/ablations", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["config"].startswith("configs/ablations/") for r in rows)
    assert main(["params", "--all", "configs/ablations/"]) == 0
    table = capsys.readouterr().out
    assert "| configs/ablations/swin_t_unet/alpha2.yaml |" in table
