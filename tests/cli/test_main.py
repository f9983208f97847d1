"""The CLI as a user meets it (tasks/cli/__init__.py's main): errors are one clear line with exit 2,
never a traceback."""

from __future__ import annotations

import json

from tasks.cli import main
from tests.support import cli


def test_python_dash_m_and_bad_params_key_give_a_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: -1\n")
    result = cli.run("train", "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "params.yaml:2: field 'train.epochs'" in result.stderr


def test_validate_fail_mode_exits_non_zero_with_the_report_written(raw_copy, tmp_path):
    (raw_copy / "val" / "val_label.txt").write_text("broken line\n")
    report = tmp_path / "report.json"
    result = cli.run("validate", "--data", str(raw_copy), "--on-error", "fail", "--report", str(report))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "val_label.txt:1" in result.stderr
    assert json.loads(report.read_text())["problems"] == 1


def test_missing_inputs_are_named(tmp_path, capsys):
    assert main(["evaluate", "--params", "params.yaml", "--model", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none'}: checkpoint folder not found" in capsys.readouterr().err
    assert main(["predict", "--params", "params.yaml", "--data", str(tmp_path / "nowhere")]) == 2
    assert "manifest.json: not found; run `trafficlip prepare` first" in capsys.readouterr().err
