"""The offline HTML report of an evaluation (tasks/report/html.py), its saved galleries, and the evaluate
step and `trafficlip report` that write it."""

from __future__ import annotations

import base64
import copy
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tasks.cli import main
from tasks.report import galleries, html, plots
from tasks.steps import evaluate
from tests.support import ROOT, evaluation

EXPERIMENT = "tests-report"    # not "tests": test_tracking counts the evaluate runs linked to `tracked`
DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
URL = re.compile(r"https?:|ftp:|(?:src|href|action)\s*=\s*[\"']?//|url\(", re.IGNORECASE)


def _online(page: str) -> list[str]:
    """Whatever in the page (outside its data: images) would load something from elsewhere."""
    return URL.findall(DATA_URI.sub("", page))


def _embedded(page: str) -> list[Image.Image]:
    return [evaluation.png(base64.b64decode(data))
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _gallery(text: str, name: str = "01-vehicle.png") -> html.Gallery:
    images = np.full((3, 32, 32, 3), 100, dtype=np.uint8)
    return html.Gallery(name, text, "vehicle - AP 0.5", galleries.render(text, "vehicle - AP 0.5", images,
                                                                           [True, False, None]))


# --- the HTML report ------------------------------------------------------------------------------

def test_report_has_the_numbers_embedded_images_escaped_texts_and_nothing_online():
    metrics = evaluation.metrics()
    hostile = 'A red SUV <script>alert("x")</script> & <img src=x onerror=alert(1)>'
    shown = [_gallery(hostile), _gallery("A white sedan.", "02-vehicle.png")]
    page = html.build_html(metrics, html.pictures(metrics, evaluation.STEPS, evaluation.VALIDATION), shown,
                             {"model": "models/<b>model</b>"})
    for group in ("overall", "vehicle", "pedestrian"):
        for key in ("map_at_10", "recall_at_1", "recall_at_5", "recall_at_10"):
            assert f"{metrics[group][key]:.4f}" in page
            if metrics["baseline"][group][key] is not None:
                assert f"{metrics['baseline'][group][key]:.4f}" in page
    assert f"{metrics['overall']['map_at_10'] - metrics['baseline']['overall']['map_at_10']:+.4f}" in page
    images = _embedded(page)
    assert len(images) == 4 and page.count("<img ") == 4                 # 2 plots + 2 galleries, all inline
    assert images[2].size == shown[0].image.size
    # user text is shown as text, never as markup
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    assert "models/&lt;b&gt;model&lt;/b&gt;" in page
    # offline: no URL of any kind, nothing but data: images, and the page forbids loading anything else
    assert _online(page) == []
    assert set(re.findall(r'(?:src|href)="([a-z]+):', page)) == {"data"}
    assert "default-src 'none'" in page and "<link" not in page and "@import" not in page


def test_saved_galleries_carry_their_query_text_for_a_rebuild(tmp_path):
    folder = tmp_path / "plots"
    (folder / "stale").mkdir(parents=True)
    shown = [_gallery('Query "one" <b>'), _gallery("Query two", "02-pedestrian.png")]
    picture = html.Picture("category_metrics.png", "bars", plots.category_metrics(evaluation.metrics()))
    written = html.save_pictures(folder, [picture], shown)
    assert sorted(p.relative_to(folder).as_posix() for p in written) == [
        "category_metrics.png", "galleries/01-vehicle.png", "galleries/02-pedestrian.png"]
    assert not (folder / "stale").exists()                               # the folder is replaced as a whole
    back = html.read_galleries(folder / html.GALLERIES)
    assert [(g.name, g.text, g.caption) for g in back] == [(g.name, g.text, g.caption) for g in shown]
    assert np.array_equal(np.asarray(back[0].image), np.asarray(shown[0].image))


# --- the evaluate step and `trafficlip report` ----------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tracked, tmp_path_factory) -> SimpleNamespace:
    """The tracked tiny model evaluated again with the plots and the report asked for."""
    out = tmp_path_factory.mktemp("evaluated")
    params = copy.deepcopy(tracked.params)
    params["mlflow"]["experiment"] = EXPERIMENT
    steps_csv = tracked.folder / "reports" / "train_steps.csv"
    evaluate.run(params, tracked.data, tracked.model, tracked.folder / "models" / "initial", out / "eval.json",
                 out / "eval_queries.json", tracked.train_summary, plots_dir=out / "plots",
                 report_out=out / "eval_report.html", train_steps=steps_csv)
    return SimpleNamespace(out=out, params=params, tracked=tracked, steps_csv=steps_csv,
                           metrics=json.loads((out / "eval.json").read_text()))


def test_evaluate_writes_the_plots_galleries_and_report_and_logs_them(evaluated):
    out, metrics = evaluated.out, evaluated.metrics
    curves = Image.open(out / "plots" / html.TRAINING_CURVES)
    assert curves.format == "PNG" and curves.width >= 600
    # the linked training run's validation mAP@10 per epoch is the third panel
    assert curves.height == evaluation.png(plots.training_curves(evaluation.STEPS, evaluation.VALIDATION)).height
    assert Image.open(out / "plots" / html.CATEGORY_METRICS).width >= 600
    saved = sorted(p.name for p in (out / "plots" / "galleries").iterdir())
    assert saved == ["01-pedestrian.png", "02-vehicle.png"]              # mlflow.gallery_queries: 2
    queries = {q["text"] for q in json.loads((out / "eval_queries.json").read_text())}
    assert {g.text for g in html.read_galleries(out / "plots" / "galleries")} <= queries

    page = (out / "eval_report.html").read_text(encoding="utf-8")
    assert f"{metrics['overall']['map_at_10']:.4f}" in page
    assert f"{metrics['baseline']['pedestrian']['recall_at_10']:.4f}" in page
    assert len(_embedded(page)) == 4 and _online(page) == []
    assert "validation mAP@10 per epoch" in page and evaluated.tracked.summary["mlflow_run_id"] in page

    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.`trafficlip.step` = 'evaluate'")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert run_id in page
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"eval.json", "eval_report.html", "plots", "galleries"} <= files
    assert sorted(a.path for a in client.list_artifacts(run_id, "plots")) == [
        "plots/category_metrics.png", "plots/training_curves.png"]
    assert sorted(a.path for a in client.list_artifacts(run_id, "galleries")) == [
        "galleries/01-pedestrian.png", "galleries/02-vehicle.png"]
    logged = open(client.download_artifacts(run_id, "eval_report.html"), encoding="utf-8").read()
    assert logged == page


def test_report_command_rebuilds_the_page_from_the_files_on_disk(evaluated, tmp_path, capsys):
    out = evaluated.out
    argv = ["report", "--params", str(ROOT / "params.yaml"), "--metrics", str(out / "eval.json"),
            "--train-steps", str(evaluated.steps_csv), "--train-summary", str(evaluated.tracked.train_summary),
            "--plots", str(out / "plots")]
    assert main(argv + ["--out", str(tmp_path / "with_mlflow.html")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["galleries"] == 2 and result["validation_curve"] is True
    page = (tmp_path / "with_mlflow.html").read_text(encoding="utf-8")
    assert f"{evaluated.metrics['vehicle']['recall_at_5']:.4f}" in page and _online(page) == []
    for gallery in html.read_galleries(out / "plots" / "galleries"):
        assert html._e(gallery.text) in page
    assert len(_embedded(page)) == 4

    # tracking off: the training curves come from the CSV alone
    assert main(argv + ["--out", str(tmp_path / "offline.html"), "--set", "mlflow.enabled=false"]) == 0
    assert json.loads(capsys.readouterr().out)["validation_curve"] is False
    curves = _embedded((tmp_path / "offline.html").read_text(encoding="utf-8"))[0]
    assert curves.height == evaluation.png(plots.training_curves(evaluation.STEPS)).height

    assert main(["report", "--metrics", str(tmp_path / "none.json"), "--out", str(tmp_path / "x.html")]) == 2
    assert "none.json: not found" in capsys.readouterr().err
