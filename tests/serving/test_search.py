"""`trafficlip search` (tasks/serving/search.py): a query against a gallery folder with the champion, ranked
image names and a contact sheet, the gallery's embeddings cached for the next process, bad input refused."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from tests.support import cli
from tests.support.workspace import project_env


def _search(args, cwd, cache):
    return cli.run("search", *args, cwd=cwd, env=project_env(TRAFFICLIP_EMBEDDING_CACHE=str(cache)))


@pytest.mark.e2e    # two CLI processes load the champion and embed the gallery
def test_search_prints_ranked_images_and_writes_a_contact_sheet(champion, gallery, tmp_path):
    folder, params_file = champion
    args = ["a red SUV", "--gallery", str(gallery), "--top", "5", "--params", str(params_file),
            "--sheet", str(tmp_path / "sheet.png")]
    first = _search([*args, "--json"], tmp_path, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    model_name = yaml.safe_load(params_file.read_text())["mlflow"]["registered_model"]
    assert result["model"] == f"models:/{model_name}@champion" and result["version"] == 1
    names = {p.name for p in gallery.iterdir()}
    hits = result["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and {h["image"] for h in hits} <= names
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert result["embeddings"] == "computed"
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width > 300 and sheet.height > 100
    # a second process over the same gallery and model reads the embeddings from the cache: same ranking
    second = _search([*args[:-2], "--sheet", ""], tmp_path, tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "gallery embeddings cached" in second.stdout
    printed = [line.split() for line in second.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[2] for row in printed] == [h["image"] for h in hits]


@pytest.mark.parametrize("args, message", [
    (["", "--top", "5"], "the query is empty"),
    (["a red SUV", "--top", "0"], "expected 1 to 100"),
    (["x" * 600], "at most 500"),
])
def test_search_refuses_bad_input_in_one_line(champion, gallery, tmp_path, args, message):
    _, params_file = champion
    result = _search([*args, "--gallery", str(gallery), "--params", str(params_file)], tmp_path, tmp_path / "cache")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
