"""The `vqstudy` command: overrides, pass-through subcommands, clear errors."""

import pytest

from vqstudy.cli import main
from vqstudy.config import parse_overrides


def test_overrides_nest_and_parse_yaml_values():
    assert parse_overrides(["train.max_steps=10", "name=x", "models=[single]", "train.lr=1e-3"]) == {
        "train": {"max_steps": 10, "lr": 1e-3},
        "name": "x",
        "models": ["single"],
    }
    with pytest.raises(SystemExit, match="key.path=value"):
        parse_overrides(["oops"])


@pytest.mark.parametrize("command", ["bench", "bottleneck", "export", "actions train"])
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
