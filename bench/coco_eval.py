"""Time mbtasks' coco_metrics against plain pycocotools on the same synthetic detections, in one run.

    python bench/coco_eval.py [--images 5000] [--detections 100] [--seed 0] [--repeats 3] [--backends NAME,...]

Ground truth in COCO val2017's make-up (80 categories by their real ids, ~7 boxes an image of all size ranges, 1% of
images empty, 1% crowd regions as compressed RLE), a detector's 100 answers an image. Times plain pycocotools
(COCO.loadRes + COCOeval) and coco_metrics with each of --backends (default: its default backend) in alternation in
this process, min / median / max over --repeats; prints the 12 figures' largest difference to pycocotools', and the
peak memory each needs above the data, each run once in a fresh process (peak RSS, which sees C++ allocations too).

Toy size, as tests/test_bench.py runs it: --images 8 --detections 5 --repeats 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import multiprocessing
import re
import statistics
import time
from collections.abc import Callable

import numpy as np
from arguments import BenchParser, at_least  # bench/arguments.py, beside this script
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

from mbtasks.errors import MbtasksError
from mbtasks.evaluation.coco import DEFAULT_BACKEND, STAT_NAMES, check_backend, coco_metrics

IMAGE_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500))  # (height, width), COCO's usual ones


def coco_categories() -> list[dict]:
    """COCO's 80 categories under their real ids (1..90 with gaps), from torchvision's weights metadata."""
    names = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]
    return [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(names) if i and name != "N/A"]


def synthetic_ground_truth(num_images: int, rng: np.random.Generator) -> dict:
    """COCO val2017's make-up: 1-14 boxes an image (1% none) of every size range, areas below the box's as a mask's
    are, 1% crowd regions with a compressed RLE mask as instances_val2017.json stores them."""
    categories = coco_categories()
    ids = np.array([c["id"] for c in categories])
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        count = 0 if rng.random() < 0.01 else int(rng.integers(1, 15))
        sides = np.exp(rng.uniform(np.log(4), np.log(0.9 * min(height, width)), size=(count, 2)))
        corners = rng.uniform(0, 1, size=(count, 2)) * ([width, height] - sides)
        for (x, y), (w, h), category in zip(corners, sides, rng.choice(ids, count)):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category),
                "iscrowd": 0,
                "bbox": [round(float(v), 2) for v in (x, y, w, h)],
            }
            if rng.random() < 0.01:
                mask = np.zeros((height, width), np.uint8, order="F")
                mask[int(y) : int(y + h) + 1, int(x) : int(x + w) + 1] = 1
                rle = mask_utils.encode(mask)
                ann.update(
                    iscrowd=1,
                    area=float(mask_utils.area(rle)),
                    bbox=mask_utils.toBbox(rle).tolist(),
                    segmentation={"counts": rle["counts"].decode("ascii"), "size": [height, width]},
                )
            else:
                ann.update(
                    area=round(float(w * h * rng.uniform(0.4, 0.9)), 2),
                    segmentation=[[round(float(v), 2) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]],
                )
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_detections(gt: dict, per_image: int, rng: np.random.Generator) -> list[dict]:
    """per_image detections an image: jittered copies of 80% of its boxes (10% in a wrong category), the rest weak
    answers crowded into a few categories as a detector's are (so AR10 < AR100); boxes to 2 decimals, scores to 3
    (ties, as real results files have)."""
    ids = np.array([c["id"] for c in gt["categories"]])
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for image in gt["images"]:
        found = [a for a in by_image.get(image["id"], [])[:per_image] if rng.random() < 0.8]
        boxes = np.array([a["bbox"] for a in found]).reshape(-1, 4)
        xy = boxes[:, :2] + rng.normal(0, 0.08, (len(found), 2)) * boxes[:, 2:]
        wh = boxes[:, 2:] * np.exp(rng.normal(0, 0.1, (len(found), 2)))
        categories = np.array([a["category_id"] for a in found], dtype=int)
        wrong = rng.random(len(found)) < 0.1
        categories[wrong] = rng.choice(ids, int(wrong.sum()))
        extra = per_image - len(found)
        extra_wh = np.exp(rng.uniform(np.log(4), np.log(300), (extra, 2)))
        extra_xy = rng.uniform(0, 1, (extra, 2)) * np.maximum([image["width"], image["height"]] - extra_wh, 1)
        likely = np.concatenate([categories, rng.choice(ids, 4)])
        extra_categories = np.where(rng.random(extra) < 0.8, rng.choice(likely, extra), rng.choice(ids, extra))
        all_boxes = np.concatenate([np.concatenate([xy, wh], 1), np.concatenate([extra_xy, extra_wh], 1)]).round(2)
        all_scores = np.concatenate([rng.uniform(0.3, 1.0, len(found)), rng.uniform(0.0, 0.6, extra)]).round(3)
        results += [
            {"image_id": image["id"], "category_id": int(c), "bbox": b, "score": s}
            for c, b, s in zip(
                np.concatenate([categories, extra_categories]).tolist(), all_boxes.tolist(), all_scores.tolist()
            )
        ]
    return results


def synthetic_set(num_images: int, per_image: int, seed: int) -> tuple[COCO, list[dict]]:
    """The ground truth (indexed) and the detections of one seed."""
    rng = np.random.default_rng(seed)
    gt = synthetic_ground_truth(num_images, rng)
    coco_gt = COCO()
    coco_gt.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt, synthetic_detections(gt, per_image, rng)


def plain_pycocotools(coco_gt: COCO, results: list[dict]) -> list[float]:
    """The usual recipe: loadRes, then COCOeval evaluate / accumulate / summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1))


def _peak_child(setup: Callable, args: tuple, queue) -> None:
    run = setup(*args)  # builds the data; what it costs is not counted
    gc.collect()
    baseline = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS, to the RSS now (Linux)
    start = time.perf_counter()
    run()
    queue.put((time.perf_counter() - start, (_status_kb("VmHWM") - baseline) / 1024))


def peak_memory(setup: Callable, *args) -> tuple[float, float]:
    """(seconds, MB of peak RSS above the data) of setup(*args)() in a fresh process: setup builds the data and
    returns what to measure; C++ allocations count, as tracemalloc's would not."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_child, args=(setup, args, queue))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def timed_in_turn(runs: dict[str, Callable], repeats: int) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Each run's seconds over `repeats` rounds, the runs in turn within a round (machine noise falls on all
    alike), and what each returned."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """min / median / max."""
    return " / ".join(f"{v:.{digits}f}{unit}" for v in (min(values), statistics.median(values), max(values)))


def figures_against(figures: list[float], reference: list[float]) -> str:
    """'identical', or the largest absolute difference."""
    if figures == reference:
        return "figures identical"
    return f"figures max abs difference {max(abs(a - b) for a, b in zip(figures, reference)):.1e}"


def _anchor_setup(images: int, per_image: int, seed: int) -> Callable:
    coco_gt, results = synthetic_set(images, per_image, seed)
    return lambda: plain_pycocotools(coco_gt, results)


def _backend_setup(images: int, per_image: int, seed: int, backend: str) -> Callable:
    coco_gt, results = synthetic_set(images, per_image, seed)
    return lambda: coco_metrics(coco_gt, results, backend=backend)


def _backends(text: str) -> list[str]:
    try:
        return [check_backend(name) for name in text.split(",")]
    except MbtasksError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=at_least(1), default=5000)
    parser.add_argument("--detections", type=at_least(1), default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument(
        "--backends",
        type=_backends,
        default=[DEFAULT_BACKEND],
        help=f"coco_metrics backends to time, comma-separated (default {DEFAULT_BACKEND})",
    )
    args = parser.parse_args()

    coco_gt, results = synthetic_set(args.images, args.detections, args.seed)
    anns = coco_gt.dataset["annotations"]
    print(
        f"{len(coco_gt.imgs)} images ({sum(not coco_gt.imgToAnns[i] for i in coco_gt.imgs)} without annotations), "
        f"{len(anns)} ground-truth boxes ({sum(a['iscrowd'] for a in anns)} crowd regions, compressed RLE), "
        f"{len(coco_gt.cats)} categories, {len(results)} detections"
    )

    anchor = "pycocotools (loadRes + COCOeval)"
    runs = {anchor: lambda: plain_pycocotools(coco_gt, results)}
    for backend in args.backends:
        runs[f"coco_metrics, {backend}"] = lambda backend=backend: list(
            coco_metrics(coco_gt, results, backend=backend).values()
        )
    seconds, figures = timed_in_turn(runs, args.repeats)

    print(
        f"seconds over {args.repeats} repeats in turn, min / median / max; speed-up = pycocotools' time / this "
        "one's, per repeat"
    )
    for name in runs:
        speedup = [a / b for a, b in zip(seconds[anchor], seconds[name])]
        print(
            f"  {name:<38} {spread(seconds[name], ' s')}   speed-up {spread(speedup, 'x')}   "
            f"{figures_against(figures[name], figures[anchor])}"
        )
    print("  " + "  ".join(f"{n} {v:.4f}" for n, v in zip(STAT_NAMES, figures[anchor])))

    print("peak memory above the data (peak RSS, one run each in a fresh process):")
    memory = {anchor: peak_memory(_anchor_setup, args.images, args.detections, args.seed)}
    for backend in args.backends:
        memory[f"coco_metrics, {backend}"] = peak_memory(
            _backend_setup, args.images, args.detections, args.seed, backend
        )
    for name, (took, megabytes) in memory.items():
        print(f"  {name:<38} {megabytes:7.0f} MB  (that run {took:.2f} s)")


if __name__ == "__main__":
    main()
