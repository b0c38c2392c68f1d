"""Segmentation evaluation: mbtasks against cityscapesscripts' own evaluation, bad inputs, confusion-matrix mIoU."""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mbtasks.datasets.cityscapes import label_ids_to_train_ids
from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.segmentation import (
    CityscapesEvaluator,
    ConfusionMatrix,
    evaluate_cityscapes_folders,
    find_cityscapes_pairs,
    format_cityscapes_table,
)
from mbtasks.io.images import read_label_png

SIZE = (96, 192)
# predicted ids include ignored classes (0, 4, caravan 29, trailer 30) and classes absent from the ground truth
WRONG_IDS = [0, 4, 7, 8, 11, 21, 23, 24, 25, 26, 27, 29, 30, 33]


@pytest.fixture(scope="module")
def cityscapes_case(tmp_path_factory):
    """Synthetic gtFine with many instances (plus rider, caravan and a car group) and perturbed predictions."""
    tmp = tmp_path_factory.mktemp("cs")
    root, pred_dir = tmp / "cityscapes", tmp / "pred"
    write_streets_cityscapes(root, seed=3, num_train=0, num_val=5, size=SIZE, max_cars=8, max_persons=8)
    gt_files = sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    # extra ground truth on the first image: a rider instance, a caravan instance (ignored) and a car group
    label_path = gt_files[0]
    instance_path = label_path.replace("labelIds", "instanceIds")
    label_ids, instance_ids = read_label_png(label_path), read_label_png(instance_path)
    for (y0, y1, x0, x1), label, instance in (
        ((50, 80, 5, 20), 25, 25000),
        ((40, 60, 150, 185), 29, 29000),
        ((55, 70, 60, 90), 26, 26),
    ):
        label_ids[y0:y1, x0:x1], instance_ids[y0:y1, x0:x1] = label, instance
    Image.fromarray(label_ids).save(label_path)
    Image.fromarray(instance_ids).save(instance_path)

    rng = np.random.default_rng(0)
    pred_dir.mkdir()
    for index, gt_file in enumerate(gt_files):
        pred = read_label_png(gt_file)
        pred = np.roll(pred, rng.integers(-2, 3), axis=1)  # boundaries off by a pixel or two
        for _ in range(15):
            y, x, r = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1]), rng.integers(2, 12)
            pred[max(0, y - r) : y + r, max(0, x - r) : x + r] = rng.choice(WRONG_IDS)
        name = pred_dir / os.path.basename(gt_file).replace("_gtFine_labelIds", "_pred")
        if index == 1:  # a palette PNG: its indices are the ids
            image = Image.fromarray(pred, mode="L").convert("P")
            image.putpalette(list(range(256)) * 3)
            image.save(name)
            assert np.array_equal(read_label_png(name), pred)
        elif index == 2:  # a 16-bit PNG
            Image.fromarray(pred.astype(np.uint16)).save(name)
        else:
            Image.fromarray(pred).save(name)
    return root, pred_dir


def run_official(gt_root, pred_dir, monkeypatch):
    """cityscapesscripts' evalPixelLevelSemanticLabeling in-process on the same files (no JSON written)."""
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # removed in numpy 2.4; the script still calls it
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = copy.copy(official.args)
    args.JSONOutput, args.quiet, args.colorized = False, True, False
    args.bold = args.nocol = ""
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    gt_files = sorted(glob.glob(os.path.join(gt_root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
    predictions = [official.getPrediction(args, gt) for gt in gt_files]
    return official.evaluateImgLists(predictions, gt_files, args), args, official


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6


def test_matches_cityscapesscripts(cityscapes_case, monkeypatch):
    root, pred_dir = cityscapes_case
    reference, _, _ = run_official(root, pred_dir, monkeypatch)
    result = evaluate_cityscapes_folders(root, pred_dir, workers=2)
    assert result["num_images"] == 5
    assert np.array_equal(np.array(result["confusion_matrix"]), np.array(reference["confMatrix"]))
    for theirs, ours in (
        ("classScores", "class_iou"),
        ("classInstScores", "class_iiou"),
        ("categoryScores", "category_iou"),
        ("categoryInstScores", "category_iiou"),
    ):
        for name, value in reference[theirs].items():
            assert same(result[ours].get(name, math.nan), value), (ours, name)
        assert set(result[ours]) <= set(reference[theirs])
    for theirs, ours in (
        ("averageScoreClasses", "mean_class_iou"),
        ("averageScoreInstClasses", "mean_class_iiou"),
        ("averageScoreCategories", "mean_category_iou"),
        ("averageScoreInstCategories", "mean_category_iiou"),
    ):
        assert same(result[ours], reference[theirs]), ours
    # the case exercises every branch: nan (never seen), 0 (only predicted), and scored instance classes
    assert math.isnan(result["class_iou"]["wall"]) and result["class_iou"]["truck"] == 0.0
    assert result["class_iiou"]["truck"] == 0.0 and 0 < result["class_iiou"]["rider"] < 1
    assert math.isnan(result["class_iiou"]["bus"])
    assert len(result["class_iou"]) == 19 and len(result["class_iiou"]) == 8 and len(result["category_iou"]) == 7


def test_table_matches_official_print(cityscapes_case, monkeypatch):
    root, pred_dir = cityscapes_case
    reference, args, official = run_official(root, pred_dir, monkeypatch)
    args.quiet = False
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        official.printClassScores(reference["classScores"], reference["classInstScores"], args)
        official.printCategoryScores(reference["categoryScores"], reference["categoryInstScores"], args)
    table = format_cityscapes_table(evaluate_cityscapes_folders(root, pred_dir)).splitlines()
    rows = [line for line in table if ":" in line and not line.startswith("Score")]
    assert rows == [line for line in printed.getvalue().splitlines() if ":" in line]
    assert sum(line.startswith("Score Average : ") for line in table) == 2


def test_update_and_merge_equal_folder_evaluation(cityscapes_case):
    root, pred_dir = cityscapes_case
    shards = [CityscapesEvaluator(), CityscapesEvaluator()]
    for index, (pred_file, gt_file) in enumerate(find_cityscapes_pairs(root, pred_dir)):
        shards[index % 2].update(
            read_label_png(pred_file),
            read_label_png(gt_file),
            read_label_png(gt_file.replace("labelIds", "instanceIds")),
        )
    merged = shards[0].merge(shards[1]).result()
    expected = evaluate_cityscapes_folders(root, pred_dir, workers=1)
    for key in ("class_iou", "class_iiou", "category_iou", "category_iiou"):
        assert all(same(merged[key][name], value) for name, value in expected[key].items())
    assert merged["confusion_matrix"] == expected["confusion_matrix"]


def test_train_id_confusion_matrix_gives_official_class_iou(cityscapes_case):
    # a model predicting train ids, scored during training, agrees with the official class IoU
    root, _ = cityscapes_case
    evaluator, matrix = CityscapesEvaluator(), ConfusionMatrix(19)
    rng = np.random.default_rng(1)
    train_to_label = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8)
    for gt_file in sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_labelIds.png"))):
        gt = read_label_png(gt_file)
        instances = read_label_png(gt_file.replace("labelIds", "instanceIds"))
        pred_train = label_ids_to_train_ids(np.roll(gt, 3, axis=0))
        pred_train[pred_train == 255] = rng.integers(0, 19)
        evaluator.update(train_to_label[pred_train], gt, instances)
        matrix.update(torch.from_numpy(pred_train), torch.from_numpy(label_ids_to_train_ids(gt)))
    official, ours = evaluator.result(), matrix.result()
    assert all(same(a, b) for a, b in zip(official["class_iou"].values(), ours["iou"].values(), strict=True))
    assert same(official["mean_class_iou"], ours["mean_iou"])


def test_confusion_matrix_numpy_torch_ignore_and_errors():
    target = np.array([[0, 1, 2, 255], [2, 2, 1, 0]])
    pred = np.array([[0, 2, 2, 1], [2, 1, 1, 0]])
    a, b = ConfusionMatrix(4, class_names=["a", "b", "c", "d"]), ConfusionMatrix(4)
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert np.array_equal(a.matrix, b.matrix) and a.matrix.sum() == 7  # the 255 pixel is not counted
    result = a.result()
    assert result["iou"]["a"] == 1.0 and result["iou"]["b"] == pytest.approx(1 / 3)
    assert result["iou"]["c"] == pytest.approx(2 / 4) and math.isnan(result["iou"]["d"])
    assert result["mean_iou"] == pytest.approx((1 + 1 / 3 + 0.5) / 3)
    assert a.merge(b).matrix.sum() == 14
    with pytest.raises(MbtasksError, match="outside 0..3"):
        a.update(np.array([4]), np.array([0]))
    with pytest.raises(MbtasksError, match="outside 0..3"):
        b.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(MbtasksError, match="shape"):
        a.update(np.zeros((2, 2)), np.zeros((2, 3)))


# ---- bad inputs: each names the file at fault ----


def write_case(tmp_path, pred: np.ndarray | None, gt: np.ndarray | None = None, instances: np.ndarray | None = None):
    """One val image of city 'testcity' with its prediction; returns gt_root, pred_dir, pred_file, gt_file."""
    gt = np.full((8, 16), 7, np.uint8) if gt is None else gt
    gt_dir, pred_dir = tmp_path / "cs" / "gtFine" / "val" / "testcity", tmp_path / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    gt_file = gt_dir / "testcity_000000_000019_gtFine_labelIds.png"
    Image.fromarray(gt).save(gt_file)
    Image.fromarray(gt.astype(np.uint16) if instances is None else instances).save(
        str(gt_file).replace("labelIds", "instanceIds")
    )
    pred_file = pred_dir / "testcity_000000_000019_pred.png"
    if pred is not None:
        Image.fromarray(pred).save(pred_file)
    return tmp_path / "cs", pred_dir, str(pred_file), str(gt_file)


def test_good_case_scores_one(tmp_path):
    gt_root, pred_dir, _, _ = write_case(tmp_path, np.full((8, 16), 7, np.uint8))
    assert evaluate_cityscapes_folders(gt_root, pred_dir)["mean_class_iou"] == 1.0


def test_prediction_of_another_size(tmp_path):
    gt_root, pred_dir, pred_file, _ = write_case(tmp_path, np.full((4, 8), 7, np.uint8))
    with pytest.raises(MbtasksError, match="prediction is 4x8 but its ground truth .* is 8x16") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == pred_file


@pytest.mark.parametrize("bad_id", [34, 255])
def test_unknown_label_id_in_prediction(tmp_path, bad_id):
    pred = np.full((8, 16), 7, np.uint8)
    pred[3, 4] = bad_id
    gt_root, pred_dir, pred_file, _ = write_case(tmp_path, pred)
    with pytest.raises(MbtasksError, match=f"unknown label id {bad_id}") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == pred_file


def test_unknown_label_id_in_ground_truth(tmp_path):
    gt = np.full((8, 16), 7, np.uint8)
    gt[0, 0] = 40
    gt_root, pred_dir, _, gt_file = write_case(tmp_path, np.full((8, 16), 7, np.uint8), gt=gt)
    with pytest.raises(MbtasksError, match="unknown label id 40") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == gt_file


def test_instance_of_a_class_without_instances(tmp_path):
    instances = np.full((8, 16), 7, np.uint16)
    instances[2:4, 2:4] = 7001  # road has no instances: the official script dies with a KeyError here
    gt_root, pred_dir, _, gt_file = write_case(tmp_path, np.full((8, 16), 7, np.uint8), instances=instances)
    with pytest.raises(MbtasksError, match="'road', which has no instances") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == gt_file.replace("labelIds", "instanceIds")


def test_missing_ground_truth(tmp_path):
    (tmp_path / "pred").mkdir()
    with pytest.raises(MbtasksError, match="no ground truth found") as error:
        evaluate_cityscapes_folders(tmp_path, tmp_path / "pred")
    assert error.value.path == tmp_path


def test_missing_instance_ids_file(tmp_path):
    gt_root, pred_dir, _, gt_file = write_case(tmp_path, np.full((8, 16), 7, np.uint8))
    instance_file = gt_file.replace("labelIds", "instanceIds")
    os.remove(instance_file)
    with pytest.raises(MbtasksError, match="file not found") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == instance_file


def test_missing_prediction(tmp_path):
    gt_root, pred_dir, _, gt_file = write_case(tmp_path, None)
    with pytest.raises(MbtasksError, match="no prediction testcity_000000_000019\\*.png") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == gt_file


def test_several_predictions_for_one_ground_truth(tmp_path):
    gt_root, pred_dir, pred_file, gt_file = write_case(tmp_path, np.full((8, 16), 7, np.uint8))
    (pred_dir / "sub").mkdir()
    shutil.copy(pred_file, pred_dir / "sub" / "testcity_000000_000019_other.png")
    with pytest.raises(MbtasksError, match="several predictions match") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == gt_file


def test_rgb_png_as_prediction(tmp_path):
    gt_root, pred_dir, pred_file, _ = write_case(tmp_path, np.full((8, 16, 3), 7, np.uint8))
    with pytest.raises(MbtasksError, match="RGB PNG where a label PNG belongs") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == pred_file


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_png(tmp_path, damage):
    rng = np.random.default_rng(0)
    gt_root, pred_dir, pred_file, _ = write_case(tmp_path, rng.choice([7, 8, 26], size=(8, 16)).astype(np.uint8))
    data = open(pred_file, "rb").read()
    with open(pred_file, "wb") as file:
        file.write(data[: len(data) // 2] if damage == "truncated" else b"not a png at all")
    with pytest.raises(MbtasksError, match="corrupt|not a PNG") as error:
        evaluate_cityscapes_folders(gt_root, pred_dir)
    assert error.value.path == pred_file
    assert "\n" not in str(error.value)
