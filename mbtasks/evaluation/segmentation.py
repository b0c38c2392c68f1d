"""Segmentation metrics: Cityscapes' official IoU/iIoU (vectorised) and a confusion-matrix mIoU (VOC, train ids)."""

from __future__ import annotations

import bisect
import glob
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args as _official_args
from cityscapesscripts.helpers.labels import category2labels, labels

from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_label_png

# The official script's weights: average instance size per class over the Cityscapes training set
AVERAGE_INSTANCE_SIZE: dict[str, float] = dict(_official_args.avgClassSize)

_IDS = [label.id for label in labels if label.id >= 0]  # the official evalLabels: every id drawn in a PNG
_NUM_IDS = max(_IDS) + 1
_ID2LABEL = {label.id: label for label in labels if label.id >= 0}
_EVALUATED = [label for label in labels if label.id >= 0 and not label.ignoreInEval]
_EVALUATED_IDS = np.array([label.id for label in _EVALUATED])
_INSTANCE_CLASSES = [label for label in _EVALUATED if label.hasInstances]
_CATEGORIES = list(category2labels)
# Categories scored for iIoU: every drawn label in them has instances (human, vehicle); ignored ones count as hits
_INSTANCE_CATEGORIES = [
    category
    for category in _CATEGORIES
    if all(label.hasInstances for label in category2labels[category] if label.id >= 0)
]
_CATEGORY_LABEL_IDS = {
    category: [label.id for label in category2labels[category] if label.id >= 0] for category in _INSTANCE_CATEGORIES
}
# Per label id: which instance category it belongs to (-1: none), its weight numerator, and whether iIoU scores it
_INSTANCE_CATEGORY_OF_ID = np.full(_NUM_IDS, -1)
for _index, _category in enumerate(_INSTANCE_CATEGORIES):
    _INSTANCE_CATEGORY_OF_ID[_CATEGORY_LABEL_IDS[_category]] = _index
_AVERAGE_SIZE_OF_ID = np.zeros(_NUM_IDS)
_SCORED_INSTANCE_ID = np.zeros(_NUM_IDS, dtype=bool)
for _label in _INSTANCE_CLASSES:
    _AVERAGE_SIZE_OF_ID[_label.id] = AVERAGE_INSTANCE_SIZE[_label.name]
    _SCORED_INSTANCE_ID[_label.id] = True
_IGNORED_ID = np.array([_ID2LABEL[i].ignoreInEval for i in range(_NUM_IDS)])


class CityscapesEvaluator:
    """Accumulates Cityscapes pixel-level counts per image; `result()` reproduces evalPixelLevelSemanticLabeling."""

    def __init__(self) -> None:
        self.confusion = np.zeros((_NUM_IDS, _NUM_IDS), dtype=np.int64)  # rows: ground truth label id
        self.instance_tp = np.zeros(_NUM_IDS)  # size-weighted, per label id
        self.instance_fn = np.zeros(_NUM_IDS)
        self.category_tp = np.zeros(len(_INSTANCE_CATEGORIES))
        self.category_fn = np.zeros(len(_INSTANCE_CATEGORIES))
        self.num_images = 0

    def update(self, pred_label_ids: np.ndarray, gt_label_ids: np.ndarray, gt_instance_ids: np.ndarray) -> None:
        """Add one image: predicted label ids, ground-truth label ids and instance ids (id*1000+k), all HxW."""
        self.merge(_image_counts(pred_label_ids, gt_label_ids, gt_instance_ids))

    def merge(self, other: CityscapesEvaluator) -> CityscapesEvaluator:
        """Add another evaluator's counts (another process, another shard) into this one."""
        self.confusion += other.confusion
        self.instance_tp += other.instance_tp
        self.instance_fn += other.instance_fn
        self.category_tp += other.category_tp
        self.category_fn += other.category_fn
        self.num_images += other.num_images
        return self

    def result(self) -> dict[str, Any]:
        """Per-class IoU and iIoU, per-category IoU and iIoU, and their four means (nan: class never seen)."""
        confusion = self.confusion
        evaluated_rows = confusion[_EVALUATED_IDS]
        class_iou, class_iiou = {}, {}
        for label in _EVALUATED:
            tp = int(confusion[label.id, label.id])
            fn = int(confusion[label.id].sum()) - tp
            # false positives only on pixels whose ground truth is evaluated
            fp = int(evaluated_rows[:, label.id].sum()) - tp
            class_iou[label.name] = _ratio(tp, tp + fp + fn)
            if label.hasInstances:
                # the official script adds in this order: weighted tp + fp, then weighted fn
                class_iiou[label.name] = _ratio(
                    self.instance_tp[label.id], self.instance_tp[label.id] + fp + self.instance_fn[label.id]
                )
        category_iou, category_iiou = {}, {}
        for category in _CATEGORIES:
            ids = [label.id for label in category2labels[category] if label.id >= 0 and not label.ignoreInEval]
            if not ids:
                continue  # void: the official script reports nan and leaves it out of tables and means
            other_rows = [label.id for label in _EVALUATED if label.category != category]
            tp = int(confusion[np.ix_(ids, ids)].sum())
            fn = int(confusion[ids].sum()) - tp
            fp = int(confusion[np.ix_(other_rows, ids)].sum())
            category_iou[category] = _ratio(tp, tp + fp + fn)
            if category in _INSTANCE_CATEGORIES:
                index = _INSTANCE_CATEGORIES.index(category)
                fp = int(confusion[np.ix_(other_rows, _CATEGORY_LABEL_IDS[category])].sum())
                category_iiou[category] = _ratio(
                    self.category_tp[index], self.category_tp[index] + fp + self.category_fn[index]
                )
        return {
            "class_iou": class_iou,
            "class_iiou": class_iiou,
            "class_accuracy": dict(zip(class_iou, _row_shares(self.class_confusion()[0]).tolist())),
            "category_iou": category_iou,
            "category_iiou": category_iiou,
            "mean_class_iou": _mean(class_iou.values()),
            "mean_class_iiou": _mean(class_iiou.values()),
            "mean_category_iou": _mean(category_iou.values()),
            "mean_category_iiou": _mean(category_iiou.values()),
            "num_images": self.num_images,
            "confusion_matrix": confusion.tolist(),
        }

    def class_confusion(self) -> tuple[np.ndarray, list[str]]:
        """(confusion over the evaluated classes, rows ground truth; their names), in the official table's order.
        Pixels predicted as a label id outside them (not a train id's) are left out of the rows."""
        return self.confusion[np.ix_(_EVALUATED_IDS, _EVALUATED_IDS)], [label.name for label in _EVALUATED]


def _row_shares(matrix: np.ndarray) -> np.ndarray:
    """The diagonal over the row sums (per-class accuracy: the share of a class's pixels predicted as it); nan for a
    class without pixels."""
    rows = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(matrix) / rows, np.nan)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator != 0 else math.nan


def _mean(scores: Any) -> float:
    # the official getScoreAverage: a plain sum in table order, skipping nan
    valid = [score for score in scores if not math.isnan(score)]
    return sum(valid) / len(valid) if valid else math.nan


def _image_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    instances: np.ndarray,
    names: tuple[str, str, str] = ("prediction", "ground truth", "ground-truth instances"),
) -> CityscapesEvaluator:
    """One image's counts; errors name the offending input by `names` (file paths when reading folders)."""
    pred_name, gt_name, instances_name = names
    for array, name in ((pred, pred_name), (gt, gt_name), (instances, instances_name)):
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise MbtasksError(f"expected a 2-D array of integer ids, got {array.dtype} of shape {array.shape}", name)
    if pred.shape != gt.shape:
        raise MbtasksError(f"prediction is {_size(pred)} but its ground truth {gt_name} is {_size(gt)}", pred_name)
    if instances.shape != gt.shape:
        raise MbtasksError(
            f"instance ids are {_size(instances)} but the label ids {gt_name} are {_size(gt)}", instances_name
        )
    counts = CityscapesEvaluator()
    counts.num_images = 1
    if gt.size == 0:
        return counts
    # Label maps are piecewise constant: count runs of equal (gt, pred, instance) along the flattened image
    # instead of pixels. At 1024x2048 this takes a third of the time np.bincount over all pixels takes for the
    # confusion matrix alone, and the instance counts then cost next to nothing (measured).
    g, p, i = gt.ravel(), pred.ravel(), instances.ravel()
    change = g[1:] != g[:-1]
    change |= p[1:] != p[:-1]
    change |= i[1:] != i[:-1]
    inner = np.flatnonzero(change)
    starts = np.empty(inner.size + 1, dtype=np.intp)
    starts[0] = 0
    np.add(inner, 1, out=starts[1:])
    lengths = np.diff(starts, append=g.size)
    g_runs, p_runs, i_runs = g[starts].astype(np.int64), p[starts].astype(np.int64), i[starts].astype(np.int64)
    for values, name, what in ((g_runs, gt_name, "ground truth"), (p_runs, pred_name, "prediction")):
        bad = values[(values < 0) | (values >= _NUM_IDS)]
        if bad.size:
            raise MbtasksError(
                f"unknown label id {int(bad[0])} in the {what} (not a label id of cityscapesscripts' table; "
                "train ids must be mapped to label ids)",
                name,
            )
    # float weights are exact for counts below 2**53
    counts.confusion += (
        np.bincount(g_runs * _NUM_IDS + p_runs, weights=lengths, minlength=_NUM_IDS**2)
        .astype(np.int64)
        .reshape(_NUM_IDS, _NUM_IDS)
    )

    is_instance = i_runs > 1000  # the official threshold: ids above 1000 are instances
    if not is_instance.any():
        return counts
    instance_ids, which = np.unique(i_runs[is_instance], return_inverse=True)
    run_lengths, run_preds = lengths[is_instance], p_runs[is_instance]
    label_ids = instance_ids // 1000
    unknown = label_ids >= _NUM_IDS
    if unknown.any():
        raise MbtasksError(f"instance id {int(instance_ids[unknown][0])} has an unknown label id", instances_name)
    scored = ~_IGNORED_ID[label_ids]
    without_instances = scored & ~_SCORED_INSTANCE_ID[label_ids]
    if without_instances.any():
        label = _ID2LABEL[int(label_ids[without_instances][0])]
        raise MbtasksError(
            f"instance id {int(instance_ids[without_instances][0])} for class '{label.name}', which has no instances",
            instances_name,
        )
    sizes = np.bincount(which, weights=run_lengths, minlength=instance_ids.size)
    hits = run_preds == label_ids[which]
    tp = np.bincount(which, weights=run_lengths * hits, minlength=instance_ids.size)
    run_category = _INSTANCE_CATEGORY_OF_ID[label_ids][which]
    category_hits = (_INSTANCE_CATEGORY_OF_ID[run_preds] == run_category) & (run_category >= 0)
    category_tp = np.bincount(which, weights=run_lengths * category_hits, minlength=instance_ids.size)

    # the official weighting, per instance: average class size / instance size
    weight = _AVERAGE_SIZE_OF_ID[label_ids] / sizes
    ids, weight, sizes, tp, category_tp = (a[scored] for a in (label_ids, weight, sizes, tp, category_tp))
    counts.instance_tp += np.bincount(ids, weights=tp * weight, minlength=_NUM_IDS)
    counts.instance_fn += np.bincount(ids, weights=(sizes - tp) * weight, minlength=_NUM_IDS)
    categories = _INSTANCE_CATEGORY_OF_ID[ids]
    in_category = categories >= 0
    counts.category_tp += np.bincount(
        categories[in_category], weights=(category_tp * weight)[in_category], minlength=len(_INSTANCE_CATEGORIES)
    )
    counts.category_fn += np.bincount(
        categories[in_category],
        weights=((sizes - category_tp) * weight)[in_category],
        minlength=len(_INSTANCE_CATEGORIES),
    )
    return counts


def _size(array: np.ndarray) -> str:
    return "x".join(str(n) for n in array.shape)


_GT_SUFFIX = "_gtFine_labelIds.png"


def find_cityscapes_pairs(
    gt_root: str | os.PathLike, pred_dir: str | os.PathLike, split: str = "val"
) -> list[tuple[str, str]]:
    """(prediction, ground-truth labelIds) path pairs; each prediction is the one `{city}_{seq}_{frame}*.png`
    anywhere under pred_dir, as the official script finds them."""
    pattern = os.path.join(os.fspath(gt_root), "gtFine", split, "*", "*" + _GT_SUFFIX)
    gt_files = sorted(glob.glob(pattern))
    if not gt_files:
        raise MbtasksError(f"no ground truth found (expected gtFine/{split}/<city>/*{_GT_SUFFIX})", gt_root)
    if not os.path.isdir(pred_dir):
        raise MbtasksError("prediction folder not found", pred_dir)
    # one sorted list of names and a prefix search replaces the official per-file fnmatch over the whole walk
    predictions = sorted(
        (name, os.path.join(root, name))
        for root, _, names in os.walk(pred_dir)
        for name in names
        if name.endswith(".png")
    )
    names = [name for name, _ in predictions]
    pairs = []
    for gt_file in gt_files:
        key = os.path.basename(gt_file)[: -len(_GT_SUFFIX)]
        start = bisect.bisect_left(names, key)
        matches = []
        while start < len(names) and names[start].startswith(key):
            matches.append(predictions[start][1])
            start += 1
        if not matches:
            raise MbtasksError(f"no prediction {key}*.png in {os.fspath(pred_dir)}", gt_file)
        if len(matches) > 1:
            raise MbtasksError(f"several predictions match: {', '.join(matches)}", gt_file)
        pairs.append((matches[0], gt_file))
    return pairs


def _file_counts(pair: tuple[str, str]) -> CityscapesEvaluator:
    pred_file, gt_file = pair
    instances_file = gt_file[: -len("labelIds.png")] + "instanceIds.png"
    pred = read_label_png(pred_file)
    gt = read_label_png(gt_file)
    instances = read_label_png(instances_file)
    return _image_counts(pred, gt, instances, (pred_file, gt_file, instances_file))


def evaluate_cityscapes_folders(
    gt_root: str | os.PathLike, pred_dir: str | os.PathLike, split: str = "val", workers: int | None = None
) -> dict[str, Any]:
    """Score a folder of labelId PNG predictions against Cityscapes gtFine, as evalPixelLevelSemanticLabeling does."""
    pairs = find_cityscapes_pairs(gt_root, pred_dir, split)
    total = CityscapesEvaluator()
    # PNG decoding and the large numpy passes release the GIL, so threads use every core
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for counts in pool.map(_file_counts, pairs):
            total.merge(counts)
    return total.result()


def format_cityscapes_table(result: dict[str, Any]) -> str:
    """The official script's class and category tables (IoU, nIoU) and their averages, without colours."""
    lines = []
    for title, kind in (("classes   ", "class"), ("categories", "category")):
        lines += [f"{title}       IoU      nIoU", "-" * 32]
        for name, iou in result[f"{kind}_iou"].items():
            lines.append(f"{name:<14}: {iou:>5.3f}    {result[f'{kind}_iiou'].get(name, math.nan):>5.3f}")
        lines += [
            "-" * 32,
            f"Score Average : {result[f'mean_{kind}_iou']:5.3f}    {result[f'mean_{kind}_iiou']:5.3f}",
            "-" * 32,
            "",
        ]
    return "\n".join(lines[:-1])


class ConfusionMatrix:
    """Pixel confusion matrix over class indices (VOC classes, Cityscapes train ids) with one ignored index."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: ground truth

    def update(self, pred: Any, target: Any) -> None:
        """Add predicted and target class indices (numpy arrays or torch tensors of one shape, any device)."""
        if tuple(pred.shape) != tuple(target.shape):
            raise MbtasksError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        n = self.num_classes
        if isinstance(pred, np.ndarray):
            pred, target = pred.astype(np.int64).ravel(), target.astype(np.int64).ravel()
            valid = target != self.ignore_index
            pred, target = pred[valid], target[valid]
            bad = (pred < 0) | (pred >= n) | (target < 0) | (target >= n)
            # out-of-range pairs go to one extra bin so the check needs no second pass
            counts = np.bincount(np.where(bad, n * n, target * n + pred), minlength=n * n + 1)
        else:
            import torch

            pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
            valid = target != self.ignore_index
            pred, target = pred[valid], target[valid]
            bad = (pred < 0) | (pred >= n) | (target < 0) | (target >= n)
            index = torch.where(bad, torch.full_like(target, n * n), target * n + pred)
            # one device-to-host copy per batch
            counts = torch.bincount(index, minlength=n * n + 1).cpu().numpy()
        if counts[n * n]:
            raise MbtasksError(
                f"{int(counts[n * n])} pixels with a class index outside 0..{n - 1} (and not {self.ignore_index})"
            )
        self.matrix += counts[: n * n].reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (another process, another shard) into this one."""
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        """Zero the counts (start of an epoch)."""
        self.matrix[:] = 0

    def result(self) -> dict[str, Any]:
        """Per-class IoU, mean IoU over classes seen in targets or predictions, pixel accuracy, and per-class accuracy
        (the share of a class's pixels predicted as it)."""
        tp = np.diag(self.matrix).astype(np.float64)
        denominator = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(denominator > 0, tp / denominator, np.nan)
        total = self.matrix.sum()
        return {
            "iou": dict(zip(self.class_names, iou.tolist(), strict=True)),
            "mean_iou": _mean(iou.tolist()),
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
            "class_accuracy": dict(zip(self.class_names, _row_shares(self.matrix).tolist(), strict=True)),
        }

    def class_confusion(self) -> tuple[np.ndarray, list[str]]:
        """(the counts, rows ground truth; the class names)."""
        return self.matrix, list(self.class_names)
