"""Time mbtasks' coco_metrics against plain pycocotools on the same synthetic detections, in one run.

python bench/coco_eval.py [--images 3000] [--detections 20] [--seed 0] [--repeats 2]
Times the faster-coco-eval backend too when that package is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mbtasks.evaluation.coco import STAT_NAMES, coco_metrics


def synthetic_ground_truth(num_images: int, rng: np.random.Generator) -> dict:
    """Ground truth of 10 categories, 1-12 boxes of all COCO size ranges per 640x480 image, some crowd."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 640, "height": 480})
        for _ in range(rng.integers(1, 13)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(400), size=2))
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 11)) * 2,  # non-contiguous ids, as COCO's
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(rng.random() < 0.02),
                }
            )
    categories = [{"id": c * 2, "name": f"class{c}", "supercategory": "thing"} for c in range(1, 11)]
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_detections(gt: dict, per_image: int, rng: np.random.Generator) -> list[dict]:
    """Jittered copies of the ground truth plus random false positives, per_image detections on average."""
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for image in gt["images"]:
        anns = by_image.get(image["id"], [])
        for ann in anns:
            if rng.random() < 0.8:
                x, y, w, h = ann["bbox"]
                x, y = x + rng.normal(0, 0.08 * w), y + rng.normal(0, 0.08 * h)
                w, h = w * np.exp(rng.normal(0, 0.1)), h * np.exp(rng.normal(0, 0.1))
                results.append(_det(image["id"], ann["category_id"], [x, y, w, h], rng.uniform(0.3, 1.0)))
        for _ in range(max(per_image - len(anns), 0)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(300), size=2))
            box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            results.append(_det(image["id"], int(rng.integers(1, 11)) * 2, box, rng.uniform(0.0, 0.6)))
    return results


def _det(image_id: int, category_id: int, box: list, score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in box], "score": float(score)}


def plain_pycocotools(coco_gt: COCO, results: list[dict]) -> list[float]:
    """The usual recipe: loadRes, then COCOeval evaluate / accumulate / summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--detections", type=int, default=20, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    gt = synthetic_ground_truth(args.images, rng)
    results = synthetic_detections(gt, args.detections, rng)
    coco_gt = COCO()
    coco_gt.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections")

    timings: dict[str, float] = {}
    figures: dict[str, list[float]] = {}
    runs = {
        "pycocotools (loadRes + COCOeval)": lambda: plain_pycocotools(coco_gt, results),
        "mbtasks coco_metrics": lambda: list(coco_metrics(coco_gt, results).values()),
    }
    if importlib.util.find_spec("faster_coco_eval") is not None:
        runs["mbtasks coco_metrics, faster-coco-eval"] = lambda: list(
            coco_metrics(coco_gt, results, backend="faster-coco-eval").values()
        )
    # Interleaved repeats, best of each: the first run of anything pays for warming caches.
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            figures[name] = run()
            timings[name] = min(timings.get(name, math.inf), time.perf_counter() - start)

    reference_name = next(iter(runs))
    reference = figures[reference_name]
    for name in runs:
        ratio = timings[name] / timings[reference_name]
        diff = max(abs(a - b) for a, b in zip(figures[name], reference))
        same = "identical" if figures[name] == reference else f"max difference {diff:.1e}"
        print(f"{name:<40} {timings[name]:7.2f} s  x{ratio:5.2f}  figures {same}")
    print("  ".join(f"{n} {v:.4f}" for n, v in zip(STAT_NAMES, reference)))

if __name__ == "__main__":
    main()
