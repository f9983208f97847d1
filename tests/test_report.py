"""Pictures of an evaluation: PNG plots, saved galleries and the offline HTML report."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tasks import evaluate, galleries, plots, report
from tasks.cli import main
from tasks.errors import TrafficlipError
from tests.conftest import ROOT

EXPERIMENT = "tests-report"    # not "tests": test_tracking counts the evaluate runs linked to `tracked`
DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
URL = re.compile(r"https?:|ftp:|(?:src|href|action)\s*=\s*[\"']?//|url\(", re.IGNORECASE)


def _online(page: str) -> list[str]:
    """Whatever in the page (outside its data: images) would load something from elsewhere."""
    return URL.findall(DATA_URI.sub("", page))


def _metrics(shift: float = 0.0) -> dict:
    def group(base: float) -> dict:
        return {"map_at_10": base + 0.1234, "trec_ap_at_10": base + 0.1, "recall_at_1": base + 0.05,
                "recall_at_5": base + 0.3, "recall_at_10": base + 0.4567, "mean_rank": 12.5 - 10 * base,
                "median_rank": 9.0, "queries": 40, "queries_without_relevant": 0}
    return {"overall": group(0.2 + shift), "vehicle": group(0.3 + shift), "pedestrian": group(0.1 + shift),
            "categories": {"query_category_accuracy": 1.0, "uncategorised_queries": 0},
            "relevance_rule": "strict", "validation_fingerprint": "abc123",
            "baseline": {"overall": group(0.0), "vehicle": group(0.01),
                         "pedestrian": {**group(0.0), "recall_at_1": None}}}


STEPS = [{"step": s, "epoch": 1 + (s - 1) // 5, "loss": 4.0 - 0.1 * s, "lr": 1e-3 * min(1, s / 3)}
         for s in range(1, 11)]
VALIDATION = {"val_map_at_10": [(0, 0.05), (5, 0.1), (10, 0.2)],
              "val_vehicle_map_at_10": [(0, 0.06), (5, 0.2), (10, 0.3)],
              "val_pedestrian_map_at_10": [(0, 0.04), (5, 0.05), (10, 0.1)]}


def _png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def _embedded(page: str) -> list[Image.Image]:
    return [_png(base64.b64decode(data)) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _gallery(text: str, name: str = "01-vehicle.png") -> report.Gallery:
    images = np.full((3, 32, 32, 3), 100, dtype=np.uint8)
    return report.Gallery(name, text, "vehicle - AP 0.5", galleries.render(text, "vehicle - AP 0.5", images,
                                                                           [True, False, None]))


# --- plots ----------------------------------------------------------------------------------------

def test_plots_are_png_images_of_a_sensible_size():
    curves = _png(plots.training_curves(STEPS))
    with_validation = _png(plots.training_curves(STEPS, VALIDATION))
    bars = _png(plots.category_metrics(_metrics()))
    for image in (curves, with_validation, bars):
        assert 600 <= image.width <= 2000 and 300 <= image.height <= 1500, image.size
        assert len(np.unique(np.asarray(image.convert("L")))) > 20   # something is drawn, not a blank canvas
    assert with_validation.height > curves.height                     # the validation panel below
    assert _png(plots.category_metrics({k: v for k, v in _metrics().items() if k != "baseline"})).size == bars.size
    assert plots.training_curves(STEPS) == plots.training_curves(STEPS)   # no timestamps or versions inside


def test_training_steps_are_read_from_the_csv_and_a_broken_row_is_named(tmp_path):
    csv = tmp_path / "train_steps.csv"
    csv.write_text("step,epoch,loss,lr\n1,1,4.5,0.0001\n2,1,4.25,0.0002\n")
    assert plots.read_steps(csv) == [{"step": 1, "epoch": 1, "loss": 4.5, "lr": 0.0001},
                                     {"step": 2, "epoch": 1, "loss": 4.25, "lr": 0.0002}]
    assert plots.read_steps(tmp_path / "missing.csv") == []
    csv.write_text("step,epoch,loss,lr\n1,1,4.5,0.0001\n2,1,nan?,0.0002\n")
    with pytest.raises(TrafficlipError, match=r"train_steps.csv:3"):
        plots.read_steps(csv)


# --- the HTML report ------------------------------------------------------------------------------

def test_report_has_the_numbers_embedded_images_escaped_texts_and_nothing_online():
    metrics = _metrics()
    hostile = 'A red SUV <script>alert("x")</script> & <img src=x onerror=alert(1)>'
    shown = [_gallery(hostile), _gallery("A white sedan.", "02-vehicle.png")]
    page = report.build_html(metrics, report.pictures(metrics, STEPS, VALIDATION), shown,
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
    picture = report.Picture("category_metrics.png", "bars", plots.category_metrics(_metrics()))
    written = report.save_pictures(folder, [picture], shown)
    assert sorted(p.relative_to(folder).as_posix() for p in written) == [
        "category_metrics.png", "galleries/01-vehicle.png", "galleries/02-pedestrian.png"]
    assert not (folder / "stale").exists()                               # the folder is replaced as a whole
    back = report.read_galleries(folder / report.GALLERIES)
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
    curves = Image.open(out / "plots" / report.TRAINING_CURVES)
    assert curves.format == "PNG" and curves.width >= 600
    # the linked training run's validation mAP@10 per epoch is the third panel
    assert curves.height == _png(plots.training_curves(STEPS, VALIDATION)).height
    assert Image.open(out / "plots" / report.CATEGORY_METRICS).width >= 600
    saved = sorted(p.name for p in (out / "plots" / "galleries").iterdir())
    assert saved == ["01-pedestrian.png", "02-vehicle.png"]              # mlflow.gallery_queries: 2
    queries = {q["text"] for q in json.loads((out / "eval_queries.json").read_text())}
    assert {g.text for g in report.read_galleries(out / "plots" / "galleries")} <= queries

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
    for gallery in report.read_galleries(out / "plots" / "galleries"):
        assert report._e(gallery.text) in page
    assert len(_embedded(page)) == 4

    # tracking off: the training curves come from the CSV alone
    assert main(argv + ["--out", str(tmp_path / "offline.html"), "--set", "mlflow.enabled=false"]) == 0
    assert json.loads(capsys.readouterr().out)["validation_curve"] is False
    curves = _embedded((tmp_path / "offline.html").read_text(encoding="utf-8"))[0]
    assert curves.height == _png(plots.training_curves(STEPS)).height

    assert main(["report", "--metrics", str(tmp_path / "none.json"), "--out", str(tmp_path / "x.html")]) == 2
    assert "none.json: not found" in capsys.readouterr().err
