"""coco_metrics against pycocotools' own COCOeval, the results-file checks, and the conversion from model outputs."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mbtasks.datasets.coco import CocoDetection
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.coco import STAT_NAMES, coco_metrics, detections_to_coco_results, format_coco_table


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_shapes_coco(tmp_path_factory.mktemp("shapes"), seed=1, num_train=0, num_val=60, image_size=96)


@pytest.fixture(scope="module")
def gt(shapes: dict[str, Path]) -> dict:
    return json.loads(shapes["val_annotations"].read_text())


def perfect_detections(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]


def perturbed_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Jittered boxes, some missed, some with the wrong class, false positives, hits on crowd regions, tied scores."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in gt["categories"]]
    results = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
        box = [x, y, w * np.exp(rng.normal(0, 0.15)), h * np.exp(rng.normal(0, 0.15))]
        category = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(category_ids))
        results.append({"image_id": ann["image_id"], "category_id": category, "bbox": [float(v) for v in box],
                        "score": round(float(rng.uniform(0.2, 1.0)), 1)})
    for image in gt["images"]:
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(5, 40, size=2)
            results.append({"image_id": image["id"], "category_id": int(rng.choice(category_ids)),
                            "bbox": [float(rng.uniform(0, 50)), float(rng.uniform(0, 50)), float(w), float(h)],
                            "score": round(float(rng.uniform(0.0, 0.6)), 1)})
    return results


def reference_stats(annotation_file: Path, results: list[dict]) -> list[float]:
    """pycocotools exactly as its README runs it."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(annotation_file))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def test_perfect_detections_score_one(shapes: dict[str, Path], gt: dict) -> None:
    metrics = coco_metrics(shapes["val_annotations"], perfect_detections(gt))
    assert list(metrics) == list(STAT_NAMES)
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["AR100"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_equal_pycocotools_exactly(shapes: dict[str, Path], gt: dict, seed: int) -> None:
    results = perturbed_detections(gt, seed)
    metrics = coco_metrics(shapes["val_annotations"], results)
    assert [metrics[name] for name in STAT_NAMES] == reference_stats(shapes["val_annotations"], results)
    assert 0.1 < metrics["AP"] < 0.9 and metrics["AP50"] > metrics["AP75"]


def test_results_file_ground_truth_object_and_list_agree(shapes: dict[str, Path], gt: dict, tmp_path: Path) -> None:
    results = perturbed_detections(gt)
    before = copy.deepcopy(results)
    from_list = coco_metrics(shapes["val_annotations"], results)
    assert results == before, "coco_metrics changed the caller's detections"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(shapes["val_annotations"]))
    assert coco_metrics(coco_gt, path) == from_list
    assert coco_metrics(str(shapes["val_annotations"]), str(path)) == from_list


def test_no_detections_give_zeros(shapes: dict[str, Path], tmp_path: Path) -> None:
    assert coco_metrics(shapes["val_annotations"], []) == dict.fromkeys(STAT_NAMES, 0.0)
    path = tmp_path / "empty.json"
    path.write_text("[]")
    assert coco_metrics(shapes["val_annotations"], path) == dict.fromkeys(STAT_NAMES, 0.0)


def test_nothing_printed_unless_verbose(shapes: dict[str, Path], gt: dict, capsys: pytest.CaptureFixture) -> None:
    coco_metrics(shapes["val_annotations"], perfect_detections(gt))
    assert capsys.readouterr().out == ""
    coco_metrics(shapes["val_annotations"], perfect_detections(gt), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_table_matches_pycocotools_summary(shapes: dict[str, Path], gt: dict) -> None:
    results = perturbed_detections(gt)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO(str(shapes["val_annotations"]))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = [line for line in printed.getvalue().splitlines() if line.startswith(" Average")]
    assert format_coco_table(coco_metrics(shapes["val_annotations"], results)).splitlines() == summary


def test_model_outputs_round_trip_to_perfect_score(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["val_images"], shapes["val_annotations"], train=True)
    outputs, image_ids = [], []
    for index in range(len(ds)):
        _, target = ds[index]
        outputs.append({"boxes": target["boxes"], "labels": target["labels"],
                        "scores": torch.linspace(1.0, 0.5, len(target["labels"]))})
        image_ids.append(target["image_id"])
    results = detections_to_coco_results(outputs, image_ids, ds.category_ids)
    assert {r["category_id"] for r in results} <= {1, 3, 5, 7}
    first = next(r for r in results if r["image_id"] == image_ids[0])
    x0, y0, x1, y1 = outputs[0]["boxes"][0].tolist()
    assert first["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    json.dumps(results)  # plain Python numbers
    assert coco_metrics(shapes["val_annotations"], results)["AP"] == 1.0


def test_label_beyond_the_classes_is_an_error() -> None:
    boxes, labels, scores = torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([9]), torch.tensor([0.5])
    outputs = [{"boxes": boxes, "labels": labels, "scores": scores}]
    with pytest.raises(MbtasksError, match="label 9 but the data set has 4 classes"):
        detections_to_coco_results(outputs, [1], [0, 1, 3, 5, 7])


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"image_id": 1}', "expected a list"),
        ('[{"image_id": 1000001, "category_id": 1, "bbox": [1, 2, 3, 4]}]', "entry 0 is not"),
        ('[{"image_id": 1000001, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]', "entry 0 is not"),
        ("[{nope", "not a JSON file"),
    ],
)
def test_malformed_results_file_is_named(shapes: dict[str, Path], tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "my_results.json"
    path.write_text(content)
    with pytest.raises(MbtasksError, match=f"my_results.json: .*{problem}"):
        coco_metrics(shapes["val_annotations"], path)


def test_results_for_another_data_set_are_named(shapes: dict[str, Path], gt: dict, tmp_path: Path) -> None:
    results = perfect_detections(gt)
    foreign = results + [dict(results[0], image_id=i) for i in (7, 8, 9)]
    path = tmp_path / "other_results.json"
    path.write_text(json.dumps(foreign))
    with pytest.raises(MbtasksError, match="other_results.json: results for another data set\\? 3 of .* image ids"):
        coco_metrics(shapes["val_annotations"], path)
    path.write_text(json.dumps(results + [dict(results[0], category_id=2)]))
    with pytest.raises(MbtasksError, match="other_results.json: .* 1 of 5 category ids are not in the ground truth"):
        coco_metrics(shapes["val_annotations"], path)


def test_bad_ground_truth_is_named(shapes: dict[str, Path], gt: dict, tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": gt["images"], "categories": gt["categories"]}))
    with pytest.raises(MbtasksError, match="gt.json: not a COCO annotation file"):
        coco_metrics(path, [])
    no_area = copy.deepcopy(gt)
    del no_area["annotations"][0]["area"]
    path.write_text(json.dumps(no_area))
    with pytest.raises(MbtasksError, match="gt.json: 1 annotations lack 'area'"):
        coco_metrics(path, perfect_detections(gt))


def test_unknown_backend_is_named(shapes: dict[str, Path]) -> None:
    with pytest.raises(MbtasksError, match="fast: unknown COCO evaluation backend; valid backends: pycocotools"):
        coco_metrics(shapes["val_annotations"], [], backend="fast")


def test_faster_coco_eval_backend_agrees_with_pycocotools(shapes: dict[str, Path], gt: dict) -> None:
    pytest.importorskip("faster_coco_eval")
    for seed in (0, 1, 2):
        results = perturbed_detections(gt, seed)
        fast = coco_metrics(shapes["val_annotations"], results, backend="faster-coco-eval")
        reference = reference_stats(shapes["val_annotations"], results)
        # Same algorithm, other summation order: equal up to rounding of the last bits.
        assert [fast[name] for name in STAT_NAMES] == pytest.approx(reference, abs=1e-12, rel=0)
    assert coco_metrics(shapes["val_annotations"], perfect_detections(gt), backend="faster-coco-eval")["AP"] == 1.0
