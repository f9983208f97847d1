"""The command line's parser (tasks/cli/parser.py): every step dvc.yaml runs is a command with the shared
--params and repeatable --set, choices come from the params schema, and a wrong command line is a usage
error (exit 2) before anything runs. (Its default paths against dvc.yaml: tests/core/test_paths.py.)"""

from __future__ import annotations

import pytest
import yaml

from tasks.cli.parser import build_parser
from tasks.core import params
from tests.support import ROOT


def test_every_stage_is_a_command_with_params_and_repeatable_overrides():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    parser = build_parser()
    for stage in stages:
        args = parser.parse_args([stage, "--params", "other.yaml", "--set", "train.epochs=3", "--set", "train.lr=0.01"])
        assert (args.command, args.params, args.set) == (stage, "other.yaml", ["train.epochs=3", "train.lr=0.01"])
        assert callable(args.func)
    assert parser.parse_args(["train"]).set is None and parser.parse_args(["train"]).params == "params.yaml"


@pytest.mark.parametrize("argv, words", [
    ([], "the following arguments are required: command"),
    (["trian"], "invalid choice: 'trian'"),
    (["validate", "--on-error", "ignore"], "invalid choice: 'ignore'"),
    (["synth", "--vehicles", "many"], "invalid int value: 'many'"),
])
def test_a_wrong_command_line_is_a_usage_error(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_choices_come_from_the_params_schema():
    parser = build_parser()
    for choice in params.key("data.on_error").choices:
        assert parser.parse_args(["validate", "--on-error", choice]).on_error == choice
