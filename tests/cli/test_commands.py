"""The commands (tasks/cli/commands.py) a user reads the answer of: `score`."""

from __future__ import annotations

import json

import pytest

from tasks.cli import main


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
    assert scored == {"map_at_10": pytest.approx(0.375), "trec_ap_at_10": pytest.approx(0.375), "queries": 1,
                      "queries_without_relevant": 0}
