"""The `vqstudy` command: overrides, pass-through subcommands, clear errors."""

import pytest

from pathlib import Path

from vqstudy.cli import main, print_table
from vqstudy.config import load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_nest_and_convert_by_field_type():
    from vqstudy.images.pair import PairConfig

    raw = parse_overrides(["train.max_steps=10", "name=inf", "models=[single]", "train.lr=1e-3"])
    assert raw == {"train": {"max_steps": "10", "lr": "1e-3"}, "name": "inf", "models": "[single]"}
    cfg = load_config(PairConfig, None, raw)
    assert cfg.train.max_steps == 10 and cfg.train.lr == 1e-3 and tuple(cfg.models) == ("single",)
    assert cfg.name == "inf"  # a string field stays a string (YAML would read inf as a float)
    with pytest.raises(ValueError, match="key.path=value"):
        parse_overrides(["oops"])


def test_unknown_override_is_named_as_an_override_not_the_yaml_file(capsys):
    assert main(["pair", "--config", str(CONFIGS / "pair_default.yaml"), "--set", "train.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "--set train.max_stepz" in err and "pair_default.yaml" not in err


def test_tables_print_full_width_plain_text_when_not_a_terminal(capsys):
    rows = [{"model": "hierarchical", "level": "bottom", "PSNR": 22.123456, "LPIPS": float("nan")}]
    print_table("pair", rows)
    out = capsys.readouterr().out
    assert "| hierarchical | bottom | 22.12 | nan |" in out and "…" not in out


@pytest.mark.parametrize("command", ["bench", "bottleneck", "export", "actions train", "pair", "plot"])
def test_pass_through_subcommands_reach_their_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_config_error_names_the_field_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "pair.yaml"
    bad.write_text("train: {max_steps: -3}\n")
    assert main(["pair", "--config", str(bad)]) == 2
    assert "TrainConfig.max_steps (-3)" in capsys.readouterr().err
