"""Segmentation benchmark, one run: inference latency against torchvision, evaluation time against cityscapesscripts.

1. Latency: torchvision's lraspp_mobilenet_v3_large (random weights, batch-norm statistics randomised) and mbtasks'
   lraspp_mobilenet_v3_large holding the same weights (`mbtasks weights import --from torchvision`), eager and as
   evaluate runs it (BN folded, channels-last), checked to give the same logits, timed at batch 1 on 512x1024 and
   1024x2048 inputs (--sizes). Runs rotate between the models and the median of each is compared, so load on the
   machine falls on all alike; CPU time is printed beside
   wall-clock time because on a busy machine it leaves out the time other processes take.
2. Evaluation: N street scenes at 1024x2048 with perturbed predictions (bench/segmentation_eval.py writes them);
   mbtasks' evaluate_cityscapes_folders and cityscapesscripts' evalPixelLevelSemanticLabeling score the same PNGs.

    python bench/segmentation.py [--runs 10] [--images 10] [--repeats 3] [--threads N] [--sizes 512x1024,1024x2048]

Toy size, as tests/test_bench.py runs it: --runs 1 --images 1 --repeats 1 --threads 1 --sizes 64x128.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.evaluation.segmentation import evaluate_cityscapes_folders
from mbtasks.layers.fusion import for_inference
from mbtasks.models import build_model
from mbtasks.models.importers import import_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from arguments import BenchParser, at_least, height_by_width  # bench/arguments.py, beside this script
from helpers import randomised  # noqa: E402  (the tests' batch-norm randomiser: features that differ by place)
from segmentation_eval import SIZE, write_predictions  # noqa: E402  (the perturbed predictions of that bench)

RESOLUTIONS = ((512, 1024), (1024, 2048))
MEANS = (
    ("mean_class_iou", "averageScoreClasses"),
    ("mean_class_iiou", "averageScoreInstClasses"),
    ("mean_category_iou", "averageScoreCategories"),
    ("mean_category_iiou", "averageScoreInstCategories"),
)


MODELS = ("torchvision", "mbtasks eager", "mbtasks inference")


def models(tmp: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's lraspp_mobilenet_v3_large (19 classes, random weights and batch-norm statistics) and mbtasks'
    holding the same weights, both in eval mode."""
    reference = randomised(
        torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)
    )
    torch.save(reference.state_dict(), os.path.join(tmp, "torchvision.pth"))
    import_weights(
        "torchvision",
        os.path.join(tmp, "torchvision.pth"),
        "lraspp_mobilenet_v3_large",
        os.path.join(tmp, "mbtasks.pth"),
    )
    return reference, build_model("lraspp_mobilenet_v3_large", weights=os.path.join(tmp, "mbtasks.pth")).eval()


def latency(runs: int, tmp: str, sizes=RESOLUTIONS) -> list[tuple[str, dict, dict]]:
    """Per resolution: resolution, then wall-clock and CPU ms of each batch-1 run per model (MODELS), taken in
    rotating order. "mbtasks inference" is what evaluate runs (for_inference: BN folded, channels-last). CPU time
    leaves out the time other processes hold the cores."""
    reference, ours = models(tmp)
    fast = for_inference(ours)
    rows = []
    for height, width in sizes:
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
        run = {
            "torchvision": lambda: reference(x)["out"],
            "mbtasks eager": lambda: ours(x)["out"],
            "mbtasks inference": lambda: fast(x)["out"],
        }
        with torch.inference_mode():
            expected = run["torchvision"]()
            for name in MODELS[1:]:
                difference = (run[name]() - expected).abs().max().item()
                assert difference < 1e-3, f"{name} logits differ from torchvision's by {difference}"
            wall, cpu = ({name: [] for name in MODELS} for _ in range(2))
            for index in range(runs + 1):  # the first round warms up
                for name in MODELS[index % 3 :] + MODELS[: index % 3]:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    run[name]()
                    if index:
                        wall[name].append(time.perf_counter() - start)
                        cpu[name].append(time.process_time() - start_cpu)
        rows.append(
            (
                f"{height}x{width}",
                *({name: [1000 * t for t in times[name]] for name in MODELS} for times in (wall, cpu)),
            )
        )
    return rows


def evaluation(images: int, tmp: str, repeats: int = 3) -> tuple[list[float], list[float], bool]:
    """Seconds of each of `repeats` runs, in turn, of mbtasks and of cityscapesscripts on the same prediction PNGs;
    the same means?"""
    gt_root, pred_dir = os.path.join(tmp, "cityscapes"), os.path.join(tmp, "pred")
    write_streets_cityscapes(gt_root, seed=0, num_train=0, num_val=images, size=SIZE, max_cars=20, max_persons=20)
    write_predictions(gt_root, pred_dir, seed=1)
    np.in1d = np.isin  # cityscapesscripts 2.3.0 still calls np.in1d, removed in numpy 2.4
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    official_args = copy.copy(official.args)
    official_args.JSONOutput, official_args.quiet = False, True
    official_args.predictionPath, official_args.predictionWalk = pred_dir, None
    gt_files = sorted(glob.glob(os.path.join(gt_root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
    ours_times, official_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = evaluate_cityscapes_folders(gt_root, pred_dir)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictions = [official.getPrediction(official_args, gt) for gt in gt_files]
        reference = official.evaluateImgLists(predictions, gt_files, official_args)
        official_times.append(time.perf_counter() - start)
    same = all(math.isclose(ours[a], reference[b], rel_tol=1e-9) for a, b in MEANS)
    return ours_times, official_times, same


def sizes(text: str) -> tuple[tuple[int, int], ...]:
    """An argparse type: HEIGHTxWIDTH sizes, comma-separated."""
    return tuple(height_by_width(size) for size in text.split(","))


def spread(values: list[float], digits: int = 1) -> str:
    """median (min-max)"""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=at_least(1), default=10, help="timed runs per model and resolution")
    parser.add_argument("--images", type=at_least(1), default=10, help="1024x2048 images for the evaluation timing")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="evaluation runs of each (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--sizes", type=sizes, default=RESOLUTIONS, help="latency inputs, HEIGHTxWIDTH,... (default 512x1024,1024x2048)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"\nlatency, lraspp_mobilenet_v3_large, batch 1, CPU, {args.runs} runs in rotating order: median ms "
            "(min-max), ratio of medians to torchvision"
        )
        print(f"{'':<25}" + "".join(f"{name:>32}" for name in MODELS))
        for resolution, wall, cpu in latency(args.runs, tmp, args.sizes):
            for kind, times in (("wall-clock", wall), ("CPU", cpu)):
                base = statistics.median(times["torchvision"])
                print(
                    f"{resolution + ' ' + kind:<25}"
                    + "".join(
                        f"{spread(times[name]):>24} {statistics.median(times[name]) / base:.3f}x" for name in MODELS
                    )
                )
        ours, official, same = evaluation(args.images, tmp, args.repeats)
    ratios = [o / m for o, m in zip(official, ours)]
    print(
        f"\nevaluation, {args.images} images {SIZE[0]}x{SIZE[1]}, the same prediction PNGs, {args.repeats} runs in "
        "turn: median s (min-max)"
    )
    print(f"{'cityscapesscripts':<20}{spread(official, 2):>24}")
    print(f"{'mbtasks':<20}{spread(ours, 2):>24}")
    print(f"cityscapesscripts / mbtasks per run: {spread(ratios)}x; same four means: {same}")


if __name__ == "__main__":
    main()
