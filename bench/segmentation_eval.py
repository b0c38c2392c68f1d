"""Cityscapes evaluation speed: mbtasks vs. only decoding the PNGs vs. cityscapesscripts, measured in one run.

Writes N street scenes at 1024x2048 (about 20 car and person instances each) with perturbed predictions into a
temporary folder, then times (a) decoding the ground-truth labelIds and instanceIds and the prediction PNGs alone
(cv2, the decoder mbtasks uses, and PIL, the official one), (b) mbtasks' evaluate_cityscapes_folders and
(c) cityscapesscripts' evalPixelLevelSemanticLabeling (its pure-Python path, as pip installs it), and prints
ratios of medians. Each runs --repeats times (min / median / max printed).

    python bench/segmentation_eval.py [--images 20] [--repeats 3]

Toy size, as tests/test_bench.py runs it: --images 1 --repeats 1.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from arguments import BenchParser, at_least  # bench/arguments.py, beside this script
from cityscapesscripts.helpers.labels import labels
from PIL import Image

from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.evaluation.segmentation import evaluate_cityscapes_folders
from mbtasks.io.images import read_label_png

SIZE = (1024, 2048)


def write_predictions(gt_root: str, pred_dir: str, seed: int) -> None:
    """A plausible model output per image: wobbly boundaries, wrong blobs, no void ids (train ids -> label ids)."""
    rng = np.random.default_rng(seed)
    to_train = np.full(256, 255, np.uint8)
    to_label = np.full(256, 7, np.uint8)  # void pixels come out as road, as a model's would come out as something
    for label in labels:
        if label.id >= 0 and 0 <= label.trainId < 255:
            to_train[label.id] = label.trainId
            to_label[label.trainId] = label.id
    os.makedirs(pred_dir, exist_ok=True)
    h, w = SIZE
    for gt_file in sorted(glob.glob(os.path.join(gt_root, "gtFine", "val", "*", "*_gtFine_labelIds.png"))):
        gt = read_label_png(gt_file)
        flow = rng.normal(0, 6, (2, h // 64, w // 64)).astype(np.float32)
        dx, dy = (cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in flow)
        grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        pred = cv2.remap(gt, grid_x + dx, grid_y + dy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        pred = to_label[to_train[pred]]
        for _ in range(12):
            centre = (int(rng.integers(0, w)), int(rng.integers(h // 4, h)))
            axes = (int(rng.integers(10, 120)), int(rng.integers(10, 80)))
            wrong = int(rng.choice([7, 8, 11, 12, 17, 21, 22, 24, 26, 27]))
            cv2.ellipse(pred, centre, axes, float(rng.uniform(0, 180)), 0, 360, wrong, -1)
        name = os.path.basename(gt_file).replace("_gtFine_labelIds.png", "_pred_labelIds.png")
        Image.fromarray(pred).save(os.path.join(pred_dir, name))


def timed(repeats: int, run) -> list[float]:
    """Seconds of each of `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=at_least(1), default=20)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    args = parser.parse_args()
    workers = min(4, os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        gt_root, pred_dir = os.path.join(tmp, "cityscapes"), os.path.join(tmp, "pred")
        start = time.perf_counter()
        write_streets_cityscapes(
            gt_root, seed=0, num_train=0, num_val=args.images, size=SIZE, max_cars=20, max_persons=20
        )
        write_predictions(gt_root, pred_dir, seed=1)
        gt_files = sorted(glob.glob(os.path.join(gt_root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
        pred_files = sorted(glob.glob(os.path.join(pred_dir, "*.png")))
        triples = [(p, g, g.replace("labelIds", "instanceIds")) for p, g in zip(pred_files, gt_files, strict=True)]
        instances = [np.unique(read_label_png(t[2])) for t in triples]
        mean_instances = np.mean([np.count_nonzero(ids > 1000) for ids in instances])
        print(
            f"{len(triples)} images {SIZE[0]}x{SIZE[1]}, {mean_instances:.1f} instances per image, "
            f"written in {time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs, {workers} threads"
        )

        def decode_cv2(triple):
            return [read_label_png(path) for path in triple]

        def decode_pil(triple):
            return [np.asarray(Image.open(path)) for path in triple]

        def threaded(fn):
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fn, triples))

        timings = {
            "decode, PIL, 1 thread": timed(args.repeats, lambda: [decode_pil(t) for t in triples]),
            "decode, cv2, 1 thread": timed(args.repeats, lambda: [decode_cv2(t) for t in triples]),
            f"decode, cv2, {workers} threads": timed(args.repeats, lambda: threaded(decode_cv2)),
            "mbtasks, 1 thread": timed(args.repeats, lambda: evaluate_cityscapes_folders(gt_root, pred_dir, workers=1)),
            f"mbtasks, {workers} threads": timed(
                args.repeats, lambda: evaluate_cityscapes_folders(gt_root, pred_dir, workers=workers)
            ),
        }
        ours = evaluate_cityscapes_folders(gt_root, pred_dir, workers=workers)

        np.in1d = np.isin  # cityscapesscripts 2.3.0 still calls np.in1d, removed in numpy 2.4
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

        official_args = copy.copy(official.args)
        official_args.JSONOutput, official_args.quiet = False, True
        official_args.predictionPath, official_args.predictionWalk = pred_dir, None
        reference = {}

        def run_official():
            predictions = [official.getPrediction(official_args, gt) for gt in gt_files]
            reference.update(official.evaluateImgLists(predictions, gt_files, official_args))

        timings["cityscapesscripts, 1 thread"] = timed(args.repeats, run_official)

    print(f"seconds over {args.repeats} runs: min / median / max, and the median per image")
    for name, seconds in timings.items():
        low, mid, high = min(seconds), statistics.median(seconds), max(seconds)
        print(f"{name:<32} {low:7.3f} / {mid:7.3f} / {high:7.3f} s   {1000 * mid / len(triples):7.1f} ms/image")
    timings = {name: statistics.median(seconds) for name, seconds in timings.items()}
    agree = all(
        math.isclose(ours[mine], reference[theirs], rel_tol=1e-9)
        for mine, theirs in (
            ("mean_class_iou", "averageScoreClasses"),
            ("mean_class_iiou", "averageScoreInstClasses"),
            ("mean_category_iou", "averageScoreCategories"),
            ("mean_category_iiou", "averageScoreInstCategories"),
        )
    )
    print(f"same four means as cityscapesscripts: {agree} ", end="")
    print(f"(class IoU {ours['mean_class_iou']:.4f}, iIoU {ours['mean_class_iiou']:.4f})")
    official_time = timings["cityscapesscripts, 1 thread"]
    for threads in sorted({1, workers}):
        label = f"{threads} thread" + ("s" if threads > 1 else "")
        ours_time = timings[f"mbtasks, {label}"]
        print(
            f"{label}: mbtasks / decode = {ours_time / timings[f'decode, cv2, {label}']:.2f}, "
            f"cityscapesscripts (1 thread) / mbtasks = {official_time / ours_time:.1f}"
        )


if __name__ == "__main__":
    main()
