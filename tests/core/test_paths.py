"""One source for the pipeline's paths: tasks/core/paths.py. dvc.yaml must spell the same ones."""

from __future__ import annotations

import shlex

import yaml

from tasks.cli.parser import build_parser
from tasks.core import paths
from tests.support import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NAMED = {value for name, value in vars(paths).items() if name.isupper() and isinstance(value, str)}


def _args(argv: list[str]) -> dict:
    return {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k != "func"}


def test_every_stage_command_gives_exactly_the_clis_default_paths():
    """`python -m tasks train ...` in dvc.yaml and `trafficlip train` alone do the same thing."""
    for name, stage in STAGES.items():
        argv = shlex.split(stage["cmd"])
        assert argv[:4] == ["python", "-m", "tasks", name], name
        assert _args(argv[3:]) == _args([name]), f"dvc.yaml stages.{name}.cmd differs from tasks/core/paths.py"


def test_every_output_and_data_dependency_is_a_named_path():
    for name, stage in STAGES.items():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("deps", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            if not path.startswith("tasks/"):
                assert path in NAMED, f"dvc.yaml stages.{name}: {path} is not named in tasks/core/paths.py"


def test_the_check_sees_a_path_spelt_differently():
    argv = shlex.split(STAGES["prepare"]["cmd"].replace("data/prepared", "data/prepared-v2"))
    assert _args(argv[3:]) != _args(["prepare"])
