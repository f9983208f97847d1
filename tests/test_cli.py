"""The CLI as a user meets it: errors are one clear line with exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.cli import main


def _cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tasks", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_python_dash_m_and_bad_params_key_give_a_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: -1\n")
    result = _cli("train", "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "params.yaml:2: field 'train.epochs'" in result.stderr


def test_validate_fail_mode_exits_non_zero_with_the_report_written(raw_copy, tmp_path):
    (raw_copy / "val" / "val_label.txt").write_text("broken line\n")
    report = tmp_path / "report.json"
    result = _cli("validate", "--data", str(raw_copy), "--on-error", "fail", "--report", str(report))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "val_label.txt:1" in result.stderr
    assert json.loads(report.read_text())["problems"] == 1


def test_missing_inputs_are_named(tmp_path, capsys):
    assert main(["evaluate", "--params", "params.yaml", "--model", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none'}: checkpoint folder not found" in capsys.readouterr().err
    assert main(["predict", "--params", "params.yaml", "--data", str(tmp_path / "nowhere")]) == 2
    assert "manifest.json: not found; run `trafficlip prepare` first" in capsys.readouterr().err


def test_score_refuses_out_of_order_submission(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("a$1.jpg\nb$2.jpg\n")
    sub = tmp_path / "sub.json"
    names = [f"{i}.jpg" for i in range(10)]
    sub.write_text(json.dumps({"results": [{"text": "b", "image_names": names}, {"text": "a", "image_names": names}]}))
    assert main(["score", "--submission", str(sub), "--ground-truth", str(gt)]) == 2
    assert "results[0].text" in capsys.readouterr().err


def test_score_prints_json(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("a$1.jpg$7.jpg\n")
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"results": [{"text": "a", "image_names": [f"{i}.jpg" for i in range(10)]}]}))
    assert main(["score", "--submission", str(sub), "--ground-truth", str(gt)]) == 0
    scored = json.loads(capsys.readouterr().out)
    # hits at ranks 2 and 8: (1/2 + 2/8) / 2
    assert scored == {"map_at_10": pytest.approx(0.375), "trec_ap_at_10": pytest.approx(0.375), "queries": 1}
