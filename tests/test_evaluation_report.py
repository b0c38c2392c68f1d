"""`mbtasks evaluate --report DIR`: the page opens in headless Chromium with every picture loaded and its per-class
table; per-class AP is COCOeval's per-category precision averaged as its summary averages; the confusion matrix's
diagonal over its rows is the per-class accuracy the evaluator gives."""

import contextlib
import io
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_IMAGE_DATA, browser_dom, task_module, write_checkpoint, write_coco_folder
from pycocotools.cocoeval import COCOeval

from mbtasks.cli import main
from mbtasks.evaluation.coco import coco_evaluation, load_coco_json
from mbtasks.evaluation.image_detections import match_image
from mbtasks.evaluation.segmentation import ConfusionMatrix


def run(*command: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(list(command)) == 0
    return printed.getvalue()


def check_page_in_browser(page: Path, class_names: list[str]) -> str:
    """The page as headless Chromium shows it once loaded: every picture it references loaded, the per-class table
    there with the class names."""
    dom = browser_dom(page)
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert sources and all((page.parent / source).is_file() for source in sources)
    assert re.search(rf'data-images-loaded="{len(sources)}"', dom), dom[:300]
    assert 'data-images-broken="0"' in dom
    assert '<table class="per-class">' in dom
    assert all(f"<td>{name}</td>" in dom for name in class_names)
    assert "http" not in page.read_text()  # nothing from elsewhere
    return dom


def noisy_results(gt: dict, seed: int = 0) -> list[dict]:
    """Each box found twice with noise, a fifth of them under another category, scores at random."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        for _ in range(2):
            category = ann["category_id"] if rng.random() > 0.2 else 17
            box = [v + float(rng.normal(0, 12)) for v in ann["bbox"]]
            box[2:] = [max(v, 1.0) for v in box[2:]]
            results.append({"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": rng.random()})
    return results


def summarised_class_ap(evaluator: COCOeval, category: int, iou: float | None = None) -> float:
    """AP of one category as COCOeval.summarize averages AP: precision at area all, 100 detections, entries > -1."""
    k = list(evaluator.params.catIds).index(category)
    precision = evaluator.eval["precision"][:, :, k, 0, -1]
    if iou is not None:
        precision = precision[np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def test_class_ap_is_cocoeval_precision_averaged_as_coco_does(tmp_path: Path) -> None:
    root = write_coco_folder(tmp_path / "coco", {"val2017": 3})
    annotations = root / "annotations" / "instances_val2017.json"
    results = noisy_results(json.loads(annotations.read_text()))
    coco_gt = load_coco_json(annotations)
    reference = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        reference.evaluate(), reference.accumulate(), reference.summarize()
    evaluations = [coco_evaluation(annotations, results, backend=b) for b in ("faster-coco-eval", "pycocotools")]
    for (iou, stat), evaluation in itertools.product(((None, 0), (0.5, 1), (0.75, 2)), evaluations):
        ours = evaluation.class_ap(iou)
        assert sorted(ours) == sorted(coco_gt.cats)  # keyed by the real category ids, 1..90 with gaps
        for category in (1, 17, 18, 62, 90, 2):
            assert ours[category] == pytest.approx(
                summarised_class_ap(reference, category, iou), abs=1e-12, nan_ok=True
            )
        assert math.isnan(ours[2])  # no boxes of category 2: no AP, as COCOeval's -1
        # every category with boxes has all T x R entries: the mean of the per-class APs is COCO's AP
        assert np.nanmean(list(ours.values())) == pytest.approx(reference.stats[stat], abs=1e-12)

    # the report of the same files: its per-class table holds the same figures under the real ids
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps(results))
    report = tmp_path / "report"
    run("evaluate", "--task", "det", "--annotations", str(annotations), "--detections", str(detections),
        "--report", str(report))  # fmt: skip
    (table,) = json.loads((report / "tables.json").read_text())["Per-class AP"]
    rows = {row[1]: dict(zip(table["columns"], row)) for row in table["rows"]}
    assert sorted(rows) == [1, 17, 18, 62, 90]
    for category, row in rows.items():
        assert row["class"] == coco_gt.cats[category]["name"]
        assert row["AP"] == pytest.approx(summarised_class_ap(reference, category), abs=1e-12)
        assert row["AP50"] == pytest.approx(summarised_class_ap(reference, category, 0.5), abs=1e-12)
    assert {"class_ap.png", "pr_iou.png", "pr_area.png", "index.html"} <= {p.name for p in report.iterdir()}


def test_image_matches_follow_coco_greedy_matching() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 90, 90]], np.float64)
    boxes = np.array([[0, 0, 10, 11], [1, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70], [0, 40, 5, 45]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # box 1 is a duplicate of 0 (false), 3 lies in the crowd region (ignored), 4 is of class 2 with no box (false)
    matches = match_image(boxes, scores, [1, 1, 1, 1, 2], truth, [1, 1, 1], truth_crowd=[0, 0, 1])
    assert (matches.found, matches.false, matches.missed) == (2, 2, 0)
    assert matches.f1 == pytest.approx(4 / 6)
    assert match_image(boxes[:0], scores[:0], [], truth[:0], []).f1 == 1.0


def test_confusion_matrix_diagonal_over_rows_is_the_printed_class_accuracy() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (40, 50))
    prediction = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape))
    matrix = ConfusionMatrix(4, class_names=["road", "car", "sky", "never"])
    matrix.update(prediction, target)
    result = matrix.result()
    counts, names = matrix.class_confusion()
    expected = [float((prediction[target == c] == c).mean()) for c in range(3)]
    assert list(result["class_accuracy"].values())[:3] == pytest.approx(expected)
    assert np.diag(counts)[:3] / counts.sum(1)[:3] == pytest.approx(expected)
    assert math.isnan(result["class_accuracy"]["never"]) and names == ["road", "car", "sky", "never"]


def test_detection_report_opens_in_a_browser(demo_detector: str, tmp_path: Path) -> None:
    report = tmp_path / "report"
    printed = run("evaluate", "--checkpoint", demo_detector, "--report", str(report), "--report-worst", "3")
    assert f"wrote {report / 'index.html'}" in printed
    dom = check_page_in_browser(report / "index.html", ["circle", "square", "triangle", "star"])
    assert dom.count('class="gallery-row"') == 3 and "F1 " in dom
    (table,) = json.loads((report / "tables.json").read_text())["Per-class AP"]
    headline = float(re.search(r"<div class=\"value\">([0-9.]+)</div><div class=\"name\">AP</div>", dom).group(1))
    ap = [row[table["columns"].index("AP")] for row in table["rows"]]
    assert float(np.mean(ap)) == pytest.approx(headline, abs=1e-4)  # the classes' mean is the printed AP


def test_segmentation_report_opens_in_a_browser(demo_segmenter: str, tmp_path: Path) -> None:
    report, figures = tmp_path / "report", tmp_path / "figures.json"
    run("evaluate", "--checkpoint", demo_segmenter, "--json", str(figures), "--report", str(report),
        "--report-worst", "2")  # fmt: skip
    metrics = json.loads(figures.read_text())
    dom = check_page_in_browser(report / "index.html", list(metrics["class_iou"]))
    assert dom.count('class="gallery-row"') == 2 and "confusion_matrix.png" in dom
    confusion = json.loads((report / "confusion_matrix.json").read_text())
    counts = np.array(confusion["counts"], np.float64)
    assert confusion["classes"] == list(metrics["class_accuracy"])
    with np.errstate(invalid="ignore"):
        accuracy = np.diag(counts) / counts.sum(1)
    printed = np.array([math.nan if v is None else v for v in metrics["class_accuracy"].values()])
    assert accuracy == pytest.approx(printed, nan_ok=True)


@pytest.mark.parametrize(
    "task, table, pictures",
    [
        ("attr", "Per-attribute figures", {"attribute_ap.png"}),
        ("embed", "Accuracy per fold", {"roc.png", "distances.png"}),
        ("cls", "Per-class accuracy", {"class_accuracy.png", "confusion_matrix.png"}),
    ],
)
def test_image_task_reports(task: str, table: str, pictures: set, tmp_path: Path) -> None:
    settings = [*TINY_IMAGE_DATA[task], f"data.synth_dir={tmp_path / 'data'}"]
    module = task_module(task, settings)
    checkpoint = write_checkpoint(tmp_path / "model.ckpt", task, module.class_names, settings=settings)
    report, figures = tmp_path / "report", tmp_path / "figures.json"
    run("evaluate", "--checkpoint", str(checkpoint), "--json", str(figures), "--report", str(report),
        *(a for s in settings for a in ("--set", s)))  # fmt: skip
    metrics = json.loads(figures.read_text())
    assert pictures <= {p.name for p in report.iterdir()}
    (rows,) = json.loads((report / "tables.json").read_text())[table]
    page = (report / "index.html").read_text()
    assert all(f'<img src="{p}"' in page for p in pictures)
    if task == "attr":  # the table's AP per attribute is the evaluator's
        assert {r[0]: r[3] for r in rows["rows"]} == {
            n: v["average_precision"] for n, v in metrics["per_attribute"].items()
        }
    if task == "embed":
        assert [r[1] for r in rows["rows"]] == metrics["fold_accuracies"]
    if task == "cls":  # images right over images of each class, weighted by the class sizes: top-1
        right = sum(r[1] * r[2] for r in rows["rows"])
        assert right / sum(r[1] for r in rows["rows"]) == pytest.approx(metrics["top1"])
        (confusions,) = json.loads((report / "tables.json").read_text())["Confusion matrix"]
        wrong = sum(r[1] for r in rows["rows"]) - right
        assert all(r[0] != r[1] for r in confusions["rows"])
        assert sum(r[2] for r in confusions["rows"]) == pytest.approx(wrong)
