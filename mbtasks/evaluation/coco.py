"""COCO box mAP: COCOeval (faster-coco-eval's C++, or pycocotools') on checked inputs, quiet, with its 12 figures
under names, and its accumulated precision for per-class AP and precision-recall curves."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from mbtasks.errors import MbtasksError

# COCOeval.stats in its own order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# (title, IoU, area, maxDets) of each figure, as COCOeval.summarize prints them.
_STAT_LAYOUT = (
    ("AP", "0.50:0.95", "all", 100),
    ("AP", "0.50", "all", 100),
    ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100),
    ("AP", "0.50:0.95", "medium", 100),
    ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1),
    ("AR", "0.50:0.95", "all", 10),
    ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100),
    ("AR", "0.50:0.95", "medium", 100),
    ("AR", "0.50:0.95", "large", 100),
)


def load_coco_json(annotation_file: str | Path) -> COCO:
    """Read a COCO annotation file into pycocotools' COCO, quietly, after checking its structure."""
    path = Path(annotation_file)
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except FileNotFoundError:
        raise MbtasksError("annotation file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MbtasksError(f"not a JSON file ({e})", path) from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(dataset, dict) or k not in dataset]
    if missing:
        raise MbtasksError(f"not a COCO annotation file: no {', '.join(repr(k) for k in missing)}", path)
    _check_structure(dataset, path)
    return coco_index(dataset)


def coco_index(dataset: dict) -> COCO:
    """pycocotools' COCO of a ground truth held in memory (a dict as an annotation file holds it), built quietly."""
    coco = COCO()
    coco.dataset = dataset
    # pycocotools prints its progress; a library should not.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_structure(dataset: dict, path: Path) -> None:
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset[key], list):
            raise MbtasksError(f"not a COCO annotation file: {key!r} is not a list", path)
    for key, fields in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        for i, entry in enumerate(dataset[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise MbtasksError(f"{key}[{i}] lacks one of {', '.join(fields)}", path)
    for key in ("images", "categories"):
        _refuse_duplicate_ids(dataset[key], key, path)
    image_ids = {im["id"] for im in dataset["images"]}
    category_ids = {c["id"] for c in dataset["categories"]}
    for i, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict) or any(f not in ann for f in ("id", "image_id", "category_id", "bbox")):
            raise MbtasksError(f"annotations[{i}] lacks one of id, image_id, category_id, bbox", path)
        if ann["category_id"] not in category_ids:
            raise MbtasksError(f"annotation {ann['id']} has unknown category id {ann['category_id']}", path)
        if ann["image_id"] not in image_ids:
            raise MbtasksError(f"annotation {ann['id']} refers to unknown image id {ann['image_id']}", path)
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise MbtasksError(f"annotation {ann['id']} has a bbox that is not 4 numbers [x, y, w, h]", path)
        if not all(math.isfinite(v) for v in box):
            raise MbtasksError(f"annotation {ann['id']} has a bbox that is not finite", path)
    _refuse_duplicate_ids(dataset["annotations"], "annotations", path)


def _refuse_duplicate_ids(entries: list, key: str, path: Path) -> None:
    """Ids are keys: pycocotools keeps the last entry of an id (an image trained with another's boxes, an annotation
    scored twice or dropped), so a repeated one is an error naming it."""
    seen: dict = {}
    for index, entry in enumerate(entries):
        first = seen.setdefault(entry["id"], index)
        if first != index:
            raise MbtasksError(f"{key}[{first}] and {key}[{index}] have the same id {entry['id']!r}", path)


# The default backend: faster-coco-eval's C++ COCOeval, several times pycocotools' speed (bench/coco_eval.py). Its 12
# figures are pycocotools' within 1e-12 (tests; the differences seen are below 1e-16), not always to the last bit:
# pycocotools divides by tp + fp + np.spacing(1), which makes a precision of exactly 1 at a curve's first detection
# 1 - 2**-52, the C++ code by tp + fp (tests/test_coco_eval.py holds that this is the only difference).
# backend="pycocotools" gives pycocotools' own bits.
DEFAULT_BACKEND = "faster-coco-eval"


@dataclass
class CocoEvaluation:
    """COCOeval's outcome: the 12 figures by name, and its accumulated precision, T x R x K x A x M (IoU thresholds x
    recall thresholds x categories x area ranges x max detections; -1 where a category has no ground truth there),
    with the category ids of its K axis (None: no detections, nothing accumulated)."""

    metrics: dict[str, float]
    precision: np.ndarray | None
    category_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_names: list[str]
    max_detections: list[int]

    def class_ap(self, iou: float | None = None, area: str = "all") -> dict[int, float]:
        """Per category id, its AP averaged as COCOeval.summarize averages AP (the valid entries, > -1, of precision
        at the last max-detections setting, over recall and, without `iou`, over the IoU thresholds); nan where the
        category has no ground truth there."""
        if self.precision is None:
            return {c: 0.0 for c in self.category_ids}
        chosen = self._at(iou, area)
        result = {}
        for k, category in enumerate(self.category_ids):
            values = chosen[:, :, k]
            valid = values[values > -1]
            result[int(category)] = float(valid.mean()) if valid.size else math.nan
        return result

    def curve(self, iou: float | None = None, area: str = "all") -> np.ndarray:
        """Precision at each recall threshold averaged over the categories with ground truth (and, without `iou`,
        over the IoU thresholds): COCO's precision-recall curve, whose mean is the AP of that IoU and area."""
        if self.precision is None:
            return np.zeros(len(self.recall_thresholds))
        chosen = self._at(iou, area)  # T' x R x K
        valid = chosen > -1
        total, count = np.where(valid, chosen, 0).sum(axis=(0, 2)), valid.sum(axis=(0, 2))
        return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)

    def _at(self, iou: float | None, area: str) -> np.ndarray:
        a = self.area_names.index(area)
        precision = self.precision[:, :, :, a, -1]
        if iou is None:
            return precision
        t = int(np.argmin(np.abs(self.iou_thresholds - iou)))
        if abs(self.iou_thresholds[t] - iou) > 1e-9:
            raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds")
        return precision[t : t + 1]


def coco_metrics(
    gt: str | Path | COCO,
    detections: Sequence[Mapping[str, Any]] | str | Path,
    verbose: bool = False,
    backend: str | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCOeval's 12 box figures (AP, AP50, ..., ARl) for detections (a results list or json file) against gt (an
    annotation file, or a COCO held in memory: another format's ground truth, coco_index).

    No detections give 0.0 everywhere (pycocotools fails on an empty list). `backend`: "faster-coco-eval" (None, the
    default) or "pycocotools". `image_ids` restricts the evaluation to those images (COCOeval's params.imgIds).
    """
    return coco_evaluation(gt, detections, verbose, backend, image_ids).metrics


def coco_evaluation(
    gt: str | Path | COCO,
    detections: Sequence[Mapping[str, Any]] | str | Path,
    verbose: bool = False,
    backend: str | None = None,
    image_ids: Sequence[int] | None = None,
) -> CocoEvaluation:
    """coco_metrics' evaluation with what COCOeval accumulated: per-category precision for per-class AP and the
    precision-recall curves."""
    evaluate = BACKENDS[check_backend(backend or DEFAULT_BACKEND)]
    coco_gt = gt if isinstance(gt, COCO) else load_coco_json(gt)
    results, results_path = _read_results(detections)
    _check_ground_truth(coco_gt, None if isinstance(gt, COCO) else Path(gt))
    _check_results(results, coco_gt, results_path)
    if not results:
        return CocoEvaluation(
            dict.fromkeys(STAT_NAMES, 0.0),
            None,
            sorted(coco_gt.cats),
            np.linspace(0.5, 0.95, 10),
            np.linspace(0.0, 1.0, 101),
            ["all", "small", "medium", "large"],
            [1, 10, 100],
        )
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        evaluator = evaluate(coco_gt, results, verbose, image_ids)
    params = evaluator.params
    return CocoEvaluation(
        {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)])},
        np.asarray(evaluator.eval["precision"]),
        [int(c) for c in params.catIds],
        np.asarray(params.iouThrs, dtype=np.float64),
        np.asarray(params.recThrs, dtype=np.float64),
        list(params.areaRngLbl),
        [int(m) for m in params.maxDets],
    )


def check_backend(backend: str) -> str:
    """The backend's name, or the error naming an unknown one."""
    if backend not in BACKENDS:
        raise MbtasksError(f"unknown COCO evaluation backend; valid backends: {', '.join(BACKENDS)}", backend)
    return backend


def _faster_coco_eval(coco_gt: COCO, results: list, verbose: bool, image_ids: Sequence[int] | None) -> Any:
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster

    say = print if verbose else _silent
    fast_gt = FastCOCO(coco_gt.dataset, print_function=say)
    coco_dt = FastCOCO(print_function=say)
    # loadRes's own work for box results, in one pass over new dicts (it writes into the dicts it gets, and adds a
    # polygon per box that box IoU never reads): measured faster than loadRes on copies (bench/coco_eval.py).
    coco_dt.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": [
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "bbox": r["bbox"],
                "score": r["score"],
                "area": r["bbox"][2] * r["bbox"][3],
                "id": i,
                "iscrowd": 0,
            }
            for i, r in enumerate(results, 1)
        ],
    }
    coco_dt.createIndex()
    evaluator = COCOeval_faster(fast_gt, coco_dt, iouType="bbox", print_function=say)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _pycocotools(coco_gt: COCO, results: list, verbose: bool, image_ids: Sequence[int] | None) -> COCOeval:
    # loadRes writes area, id and iscrowd into the dicts it gets: give it copies.
    coco_dt = coco_gt.loadRes([dict(r) for r in results])
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _silent(*args: Any) -> None:
    """faster-coco-eval's print_function when nothing is to be printed."""


# A backend: (ground truth, results, verbose, image ids) -> its COCOeval, evaluated, accumulated and summarised.
BACKENDS: dict[str, Callable[[COCO, list, bool, Sequence[int] | None], Any]] = {
    "faster-coco-eval": _faster_coco_eval,
    "pycocotools": _pycocotools,
}


def _read_results(detections: Sequence[Mapping[str, Any]] | str | Path) -> tuple[list, Path | None]:
    if not isinstance(detections, (str, Path)):
        return list(detections), None
    path = Path(detections)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except FileNotFoundError:
        raise MbtasksError("results file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MbtasksError(f"not a JSON file ({e})", path) from None


def _check_ground_truth(coco_gt: COCO, source: Path | None) -> None:
    lacking = [ann.get("id") for ann in coco_gt.anns.values() if "area" not in ann]
    if lacking:
        problem = f"{len(lacking)} annotations lack 'area' (e.g. id {lacking[0]}), which COCOeval needs"
        raise MbtasksError(problem, source)


def _check_results(results: Any, coco_gt: COCO, path: Path | None) -> None:
    where = path if path is not None else "detections"
    if not isinstance(results, list):
        raise MbtasksError("not a COCO results file: expected a list of {image_id, category_id, bbox, score}", where)
    if not _well_formed(results):
        for i, r in enumerate(results):
            if not _well_formed([r]):
                raise MbtasksError(
                    f"not a COCO results file: entry {i} is not {{image_id, category_id, bbox: [x, y, w, h], score}}",
                    where,
                )
    for key, known, what in (("image_id", coco_gt.imgs, "image"), ("category_id", coco_gt.cats, "category")):
        ids = {r[key] for r in results}
        unknown = sorted((i for i in ids if i not in known), key=str)
        if unknown:
            raise MbtasksError(
                f"results for another data set? {len(unknown)} of {len(ids)} {what} ids are not in the ground "
                f"truth (e.g. {unknown[0]})",
                where,
            )


def _well_formed(results: list) -> bool:
    """Every entry a mapping with image_id, category_id, a bbox of 4 finite numbers and a finite score."""
    # numpy checks all boxes and scores at once (measured twice as fast as checking entry by entry): a
    # list of 4 ints or floats each makes a float or int array of shape (N, 4); a string, None, a nested list or a
    # length other than 4 anywhere makes another dtype or shape, or raises.
    try:
        if not all(isinstance(r, Mapping) and "image_id" in r and "category_id" in r for r in results):
            return False
        boxes = np.array([r["bbox"] if isinstance(r["bbox"], (list, tuple)) else None for r in results])
        scores = np.array([r["score"] for r in results])
    except (KeyError, TypeError, ValueError):
        return False
    numbers = all(a.dtype.kind in "biuf" for a in (boxes, scores))
    return (
        numbers
        and boxes.shape == (len(results), 4)
        and scores.shape == (len(results),)
        and bool(np.isfinite(boxes).all() and np.isfinite(scores).all())
    )


def detections_to_coco_results(
    outputs: Sequence[Mapping[str, Any]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Model outputs (boxes xyxy, scores, labels 1..K) to COCO results, with category_ids[label] as category."""
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = box_convert(torch.as_tensor(output["boxes"], dtype=torch.float32).reshape(-1, 4), "xyxy", "xywh")
        labels = torch.as_tensor(output["labels"]).reshape(-1).tolist()
        scores = torch.as_tensor(output["scores"]).reshape(-1).tolist()
        for box, score, label in zip(boxes.tolist(), scores, labels):
            if not 0 < label < len(category_ids):
                raise MbtasksError(
                    f"the model predicts label {label} but the data set has {len(category_ids) - 1} classes "
                    "(checkpoint for another data set?)"
                )
            results.append(
                {"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box, "score": score}
            )
    return results


def format_coco_table(metrics: Mapping[str, float]) -> str:
    """The 12 figures in the layout COCOeval.summarize prints."""
    lines = []
    for name, (kind, iou, area, max_dets) in zip(STAT_NAMES, _STAT_LAYOUT):
        title = "Average Precision" if kind == "AP" else "Average Recall"
        lines.append(
            f" {title:<18} ({kind}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {metrics[name]:0.3f}"
        )
    return "\n".join(lines)
