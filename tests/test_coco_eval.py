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
from pycocotools import mask as mask_utils
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
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": [float(v) for v in box],
                "score": round(float(rng.uniform(0.2, 1.0)), 1),
            }
        )
    for image in gt["images"]:
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(5, 40, size=2)
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [float(rng.uniform(0, 50)), float(rng.uniform(0, 50)), float(w), float(h)],
                    "score": round(float(rng.uniform(0.0, 0.6)), 1),
                }
            )
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
def test_figures_equal_pycocotools(shapes: dict[str, Path], gt: dict, seed: int) -> None:
    results = perturbed_detections(gt, seed)
    reference = reference_stats(shapes["val_annotations"], results)
    exact = coco_metrics(shapes["val_annotations"], results, backend="pycocotools")
    assert [exact[name] for name in STAT_NAMES] == reference
    metrics = coco_metrics(shapes["val_annotations"], results)  # the default backend, faster-coco-eval
    assert [metrics[name] for name in STAT_NAMES] == pytest.approx(reference, abs=TOLERANCE, rel=0)
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
        outputs.append(
            {
                "boxes": target["boxes"],
                "labels": target["labels"],
                "scores": torch.linspace(1.0, 0.5, len(target["labels"])),
            }
        )
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
    valid = "valid backends: faster-coco-eval, pycocotools"
    with pytest.raises(MbtasksError, match=f"fast: unknown COCO evaluation backend; {valid}"):
        coco_metrics(shapes["val_annotations"], [], backend="fast")


# ---- the default backend on real-format ground truth ----

# faster-coco-eval's figures against pycocotools': equal but for the last bits (see the next test), so within 1e-12.
TOLERANCE = 1e-12
# COCO's own ids (1..90 with gaps), the first and last among them.
CATEGORY_IDS = (1, 3, 18, 44, 62, 90)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """The RLE COCO stores for some crowd regions: run lengths (0s first) down the columns, as a list."""
    flat = np.asfortranarray(mask).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"counts": ([0] + runs) if flat[0] else runs, "size": list(mask.shape)}


def real_format_ground_truth(seed: int) -> dict:
    """instances_val2017.json's make-up, small: COCO category ids, boxes of the small / medium / large ranges with
    mask areas below the box's, crowd regions as compressed (a counts string) and uncompressed (a counts list) RLE,
    images with no annotations."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, 41):
        height, width = [(480, 640), (427, 640), (640, 480)][image_id % 3]
        images.append(
            {"id": image_id * 1000 + 7, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width}
        )
        for n in range(0 if image_id % 10 == 0 else int(rng.integers(2, 9))):  # every tenth image: none
            side = [8, 20, 60, 200][n % 4] * rng.uniform(0.6, 1.4, 2)  # small, medium and large objects
            x, y = rng.uniform(0, [width - side[0], height - side[1]])
            box = [round(float(v), 2) for v in (x, y, *side)]
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id * 1000 + 7,
                "bbox": box,
                "iscrowd": 0,
                "category_id": int(rng.choice(CATEGORY_IDS)),
                "area": round(box[2] * box[3] * 0.7, 2),
                "segmentation": [[x, y, x + side[0], y, x + side[0], y + side[1]]],
            }
            if n == 3 and image_id % 4 == 0:  # a crowd region, its mask the box, in one of the two encodings
                mask = np.zeros((height, width), np.uint8)
                mask[int(y) : int(y + side[1]), int(x) : int(x + side[0])] = 1
                rle = mask_utils.encode(np.asfortranarray(mask))
                compressed = {"counts": rle["counts"].decode("ascii"), "size": [height, width]}
                ann.update(
                    iscrowd=1,
                    area=float(mask_utils.area(rle)),
                    bbox=mask_utils.toBbox(rle).tolist(),
                    segmentation=compressed if image_id % 8 == 0 else uncompressed_rle(mask),
                )
            annotations.append(ann)
    categories = [{"id": i, "name": f"category {i}", "supercategory": ""} for i in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def real_format_detections(gt: dict, seed: int) -> list[dict]:
    """Jittered hits (some in the wrong category, some on crowd regions), misses, false positives, detections on
    images without ground truth, tied scores, and enough answers per image and category to pass maxDets 1, 10 and
    100 (the first image: 130 answers)."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        box = [
            x + rng.normal(0, 0.1 * w),
            y + rng.normal(0, 0.1 * h),
            w * np.exp(rng.normal(0, 0.15)),
            h * np.exp(rng.normal(0, 0.15)),
        ]
        category = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": [float(v) for v in box],
                "score": round(float(rng.uniform(0.2, 1.0)), 2),
            }
        )
    for index, image in enumerate(gt["images"]):
        for _ in range(130 if index == 0 else int(rng.integers(5, 25))):
            w, h = np.exp(rng.uniform(np.log(4), np.log(300), 2))
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CATEGORY_IDS[:2])),
                    "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 200)), float(w), float(h)],
                    "score": round(float(rng.uniform(0.0, 0.7)), 2),
                }
            )
    return results


@pytest.fixture(scope="module")
def real_format(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, list[dict]]]:
    """Three seeds' ground-truth files (written as COCO writes them) and detections."""
    cases = []
    for seed in range(3):
        path = tmp_path_factory.mktemp("real_format") / "instances_val2017.json"
        gt = real_format_ground_truth(seed)
        path.write_text(json.dumps(gt))
        cases.append((path, real_format_detections(gt, seed)))
    return cases


def test_real_format_cases_cover_what_coco_has(real_format: list) -> None:
    path, results = real_format[0]
    gt = json.loads(path.read_text())
    crowd = [a["segmentation"]["counts"] for a in gt["annotations"] if a["iscrowd"]]
    assert any(isinstance(c, str) for c in crowd) and any(isinstance(c, list) for c in crowd)
    annotated = {a["image_id"] for a in gt["annotations"]}
    assert any(r["image_id"] not in annotated for r in results)
    figures = coco_metrics(path, results, backend="pycocotools")
    assert figures["AR1"] < figures["AR10"] < figures["AR100"]
    assert all(0 < figures[name] < 1 for name in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))


def test_default_backend_is_faster_coco_eval_within_1e12_of_pycocotools(real_format: list) -> None:
    for path, results in real_format:
        reference = reference_stats(path, results)
        default = coco_metrics(path, results)
        assert [default[name] for name in STAT_NAMES] == pytest.approx(reference, abs=TOLERANCE, rel=0)
        exact = coco_metrics(path, results, backend="pycocotools")
        assert [exact[name] for name in STAT_NAMES] == reference


def test_the_backends_differ_only_by_pycocotools_epsilon(real_format: list) -> None:
    """pycocotools' precision is tp / (tp + fp + np.spacing(1)): 1 - 2**-52 where faster-coco-eval's tp / (tp + fp)
    is exactly 1 (a curve's first detection, a hit); every other precision and every recall are the same bits."""
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster

    just_below_one = 1 / (1 + np.spacing(1))  # 1 - 2**-52, pycocotools' precision of 1 hit in 1
    seen = 0
    for path, results in real_format:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(path))
            slow = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
            slow.evaluate()
            slow.accumulate()
        fast_gt = FastCOCO(str(path), print_function=lambda *args: None)
        fast = COCOeval_faster(
            fast_gt, fast_gt.loadRes(copy.deepcopy(results)), "bbox", print_function=lambda *args: None
        )
        fast.evaluate()
        fast.accumulate()
        np.testing.assert_array_equal(fast.eval["recall"], slow.eval["recall"])
        slow_precision = slow.eval["precision"]
        np.testing.assert_array_equal(
            fast.eval["precision"], np.where(slow_precision == just_below_one, 1.0, slow_precision)
        )
        seen += int((slow_precision == just_below_one).sum())
    assert seen > 0  # the cases do reach the one place where the two differ


def test_default_backend_reads_results_as_given(real_format: list) -> None:
    path, results = real_format[0]
    before = copy.deepcopy(results)
    coco_metrics(path, results)
    assert results == before, "coco_metrics changed the caller's detections"


def test_malformed_entry_deep_in_the_list_is_named(real_format: list) -> None:
    path, results = real_format[0]
    for bad in ({"bbox": [1.0, 2.0, "3", 4.0]}, {"score": float("nan")}, {"bbox": [1.0, 2.0, 3.0]}, {"bbox": None}):
        broken = copy.deepcopy(results)
        broken[57].update(bad)
        with pytest.raises(MbtasksError, match="detections: not a COCO results file: entry 57 is not"):
            coco_metrics(path, broken)
