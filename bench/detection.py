"""SSDLite320 v3-Large: mbtasks against torchvision with the same weights, measured in one run.

    python bench/detection.py [--runs 50] [--train-steps 5] [--threads 2]
                              [--eval-images 5000] [--eval-detections 100] [--eval-repeats 3] [--scoring-only]

Prints inference latency at batch 1 (eager, and mbtasks' inference path: batch norm folded, channels-last),
training throughput at batch 32, peak memory of each (each in a fresh process, so one does not inflate the other),
evaluation time against plain pycocotools (bench/coco_eval.py), and the scoring of one validation epoch: what the
detection task does once the network has answered (validation_step's COCO results of each image, gathered, checked
and scored by coco_metrics) against pycocotools alone on the same detections, min / median / max over
--eval-repeats, with the peak memory of each in a fresh process.
"""

import contextlib
import io
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torchvision
from arguments import BenchParser, at_least  # bench/arguments.py, beside this script
from coco_eval import (
    figures_against,
    peak_memory,
    plain_pycocotools,
    spread,
    synthetic_detections,
    synthetic_ground_truth,
    timed_in_turn,
)
from pycocotools.coco import COCO

from mbtasks import build_model
from mbtasks.config import load_config
from mbtasks.evaluation.coco import STAT_NAMES
from mbtasks.layers.fusion import for_inference
from mbtasks.models.importers import import_weights
from mbtasks.tasks import TASKS

NAME = "ssdlite320_mobilenet_v3_large"


def models(weights_dir: str, prepare=None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's model with random weights (changed by `prepare`, if given) and mbtasks' with the same weights
    imported."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    if prepare is not None:
        prepare(reference)
    src, dst = Path(weights_dir) / "tv.pth", Path(weights_dir) / "mb.pth"
    torch.save(reference.state_dict(), src)
    import_weights("torchvision", src, NAME, dst)
    return reference, build_model(NAME, weights=dst)


def batch(size: int) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 320, 320, generator=generator) for _ in range(size)]
    targets = [
        {
            "boxes": torch.tensor([[20.0, 30.0, 150.0, 200.0], [160.0, 40.0, 300.0, 180.0]]),
            "labels": torch.tensor([1, 18]),
        }
        for _ in range(size)
    ]
    return images, targets


def latency(named: dict, runs: int) -> dict[str, list[float]]:
    """ms of each run at batch 1 per model, models timed in alternation so machine noise falls on all alike."""
    images, _ = batch(1)
    times = {name: [] for name in named}
    with torch.inference_mode():
        for model in named.values():
            model.eval()
            for _ in range(5):
                model(images)
        for _ in range(runs):
            for name, model in named.items():
                start = time.perf_counter()
                model(images)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def train_throughput(model: torch.nn.Module, steps: int, batch_size: int = 32) -> list[float]:
    """Images per second of each SGD training step (forward, MultiBox loss, backward, update)."""
    images, targets = batch(batch_size)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    durations = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up the allocator
            durations.append(time.perf_counter() - start)
    return [batch_size / d for d in durations]


def _child(which: str, steps: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(tmp)
    model = reference if which == "torchvision" else ours
    throughput = train_throughput(model, steps)
    queue.put((which, throughput, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


class StoredAnswers(torch.nn.Module):
    """Stands for the network in validation_step: given image ids as the images, their stored outputs."""

    def __init__(self, outputs: dict[int, dict]):
        super().__init__()
        self.outputs = outputs

    def forward(self, images: list[int]) -> list[dict]:
        return [self.outputs[image_id] for image_id in images]


def write_validation_set(folder: Path, images: int, per_image: int, seed: int = 0) -> tuple[Path, dict[int, dict]]:
    """A COCO-like validation annotation file (bench/coco_eval.py's) under folder, and a detector's outputs per
    image as validation_step gets them from the network: boxes (xyxy, float32), scores, labels 1..K."""
    generator = np.random.default_rng(seed)
    gt = synthetic_ground_truth(images, generator)
    path = folder / "instances_val2017.json"
    path.write_text(json.dumps(gt))
    label_of = {c["id"]: label for label, c in enumerate(gt["categories"], 1)}
    outputs = {image["id"]: {"boxes": [], "scores": [], "labels": []} for image in gt["images"]}
    for r in synthetic_detections(gt, per_image, generator):
        x, y, w, h = r["bbox"]
        output = outputs[r["image_id"]]
        output["boxes"].append([x, y, x + w, y + h])
        output["scores"].append(r["score"])
        output["labels"].append(label_of[r["category_id"]])
    return path, {
        image_id: {
            "boxes": torch.tensor(o["boxes"], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(o["scores"], dtype=torch.float32),
            "labels": torch.tensor(o["labels"], dtype=torch.int64),
        }
        for image_id, o in outputs.items()
    }


def detection_task(annotation_file: Path, outputs: dict[int, dict]):
    """The detection task on the set's classes, its network answering with `outputs`, attached to what its
    validation reads of a trainer and data module (one process)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    category_ids = [0, *sorted(gt.cats)]
    class_names = ["__background__", *(gt.cats[c]["name"] for c in category_ids[1:])]
    config = load_config(
        None, ["model.name=ssdlite320_mobilenet_v3_small", "model.options={width_mult: 0.25}"], task="det"
    )
    task = TASKS.get("det")(config.to_dict(), class_names, category_ids)
    task.model = StoredAnswers(outputs)
    data = SimpleNamespace(val_annotation_file=annotation_file, category_ids=category_ids, val_set=range(len(outputs)))
    task.trainer = SimpleNamespace(world_size=1, global_rank=0, sanity_checking=False, datamodule=data)
    return task


def scored_epoch(task, batch_size: int = 32) -> list[float]:
    """What a validation epoch does once the network has answered: validation_step's COCO results per image, then
    the epoch's end (results gathered, every image checked there, coco_metrics)."""
    image_ids = sorted(task.model.outputs)
    task.on_validation_epoch_start()
    for index in range(0, len(image_ids), batch_size):
        ids = image_ids[index : index + batch_size]
        task.validation_step((ids, [{"image_id": i} for i in ids]), index // batch_size)
    _, metrics = task.scored_results()
    return [metrics[name] for name in STAT_NAMES]


def pycocotools_alone(annotation_file: Path, results: list[dict]) -> list[float]:
    """pycocotools on the same detections: the annotation file read, loadRes, COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    return plain_pycocotools(gt, results)


def gathered_results(task) -> list[dict]:
    """The COCO results of the task's last validation epoch, in the order its score reads them."""
    return [d for image_id in sorted(task.results) for d in task.results[image_id]]


def _epoch_setup(folder: str, images: int, per_image: int) -> Callable:
    task = detection_task(*write_validation_set(Path(folder), images, per_image))
    return lambda: scored_epoch(task)


def _pycocotools_setup(folder: str, images: int, per_image: int) -> Callable:
    annotation_file, outputs = write_validation_set(Path(folder), images, per_image)
    task = detection_task(annotation_file, outputs)
    scored_epoch(task)
    results = gathered_results(task)
    return lambda: pycocotools_alone(annotation_file, results)


def validation_scoring(images: int, per_image: int, repeats: int) -> None:
    """Print the scoring of one validation epoch against pycocotools alone (seconds, speed-up, memory)."""
    with tempfile.TemporaryDirectory() as folder:
        annotation_file, outputs = write_validation_set(Path(folder), images, per_image)
        task = detection_task(annotation_file, outputs)
        scored_epoch(task)
        results = gathered_results(task)
        anchor, ours = "pycocotools alone (file, loadRes, COCOeval)", "mbtasks validation epoch scoring"
        runs = {anchor: lambda: pycocotools_alone(annotation_file, results), ours: lambda: scored_epoch(task)}
        seconds, figures = timed_in_turn(runs, repeats)
        print(
            f"scoring one validation epoch, {images} images x {per_image} detections ({len(results)} results), "
            f"seconds over {repeats} repeats in turn, min / median / max:"
        )
        for name in runs:
            speedup = [a / b for a, b in zip(seconds[anchor], seconds[name])]
            print(
                f"  {name:<45} {spread(seconds[name], ' s')}   speed-up {spread(speedup, 'x')}   "
                f"{figures_against(figures[name], figures[anchor])}"
            )
        print("  peak memory above the data (peak RSS, one run each in a fresh process):")
        for name, setup in ((anchor, _pycocotools_setup), (ours, _epoch_setup)):
            took, megabytes = peak_memory(setup, folder, images, per_image)
            print(f"  {name:<45} {megabytes:7.0f} MB  (that run {took:.2f} s)")


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=at_least(1), default=50)
    parser.add_argument("--train-steps", type=at_least(1), default=5)
    parser.add_argument("--threads", type=at_least(1), default=torch.get_num_threads())
    parser.add_argument(
        "--eval-images", type=at_least(1), default=5000, help="validation images whose scoring is timed"
    )
    parser.add_argument("--eval-detections", type=at_least(1), default=100, help="detections per validation image")
    parser.add_argument("--eval-repeats", type=at_least(1), default=3)
    parser.add_argument("--scoring-only", action="store_true", help="only the validation epoch's scoring")
    args = parser.parse_args()
    if args.eval_repeats < 1:
        parser.exit(2, f"{parser.prog}: error: --eval-repeats must be at least 1, got {args.eval_repeats}\n")
    torch.set_num_threads(args.threads)
    if args.scoring_only:
        return validation_scoring(args.eval_images, args.eval_detections, args.eval_repeats)
    print(f"{NAME}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(tmp)
    runs = latency({"torchvision": reference, "mbtasks": ours, "mbtasks inference": for_inference(ours)}, args.runs)
    ms = {name: statistics.median(values) for name, values in runs.items()}
    print(f"inference, batch 1, {args.runs} runs in alternation, ms min / median / max (ratio of medians):")
    for name in runs:
        print(f"  {name:<18} {spread(runs[name], ' ms', 1)}   ({ms[name] / ms['torchvision']:.3f})")

    context = multiprocessing.get_context("spawn")
    results = {}
    for which in ("torchvision", "mbtasks"):
        queue = context.Queue()
        process = context.Process(target=_child, args=(which, args.train_steps, args.threads, queue))
        process.start()
        name, throughput, peak = queue.get()
        process.join()
        results[name] = (throughput, peak)
    (tv_steps, tv_mb), (mb_steps, mb_mb) = results["torchvision"], results["mbtasks"]
    tv_ips, mb_ips = statistics.median(tv_steps), statistics.median(mb_steps)
    print(
        f"training, batch 32, {args.train_steps} steps, images/s min / median / max: torchvision "
        f"{spread(tv_steps, '', 1)}, mbtasks {spread(mb_steps, '', 1)} (ratio of medians {mb_ips / tv_ips:.3f}); "
        f"peak memory torchvision {tv_mb:.0f} MB, mbtasks {mb_mb:.0f} MB (ratio {mb_mb / tv_mb:.3f})"
    )

    print("evaluation against plain pycocotools (bench/coco_eval.py):")
    subprocess.run([sys.executable, str(Path(__file__).with_name("coco_eval.py")), "--repeats", "1"], check=True)
    validation_scoring(args.eval_images, args.eval_detections, args.eval_repeats)


if __name__ == "__main__":
    main()
