"""SSDLite320 v3-Large: mbtasks against torchvision with the same weights, measured in one run.

    python bench/detection.py [--runs 50] [--train-steps 5] [--train-batch 32] [--threads 2]
                              [--eval-images 5000] [--eval-detections 100] [--eval-repeats 3] [--scoring-only]

Prints inference latency at batch 1 (eager, and mbtasks' inference path: batch norm folded, channels-last),
training throughput at batch 32, peak memory of each (each in a fresh process, so one does not inflate the other),
evaluation time against plain pycocotools (bench/coco_eval.py on --eval-images x --eval-detections, one repeat), and
the scoring of one validation epoch: what the detection task does once the network has answered, against
pycocotools alone on the same detections, min / median / max over --eval-repeats, with the peak memory of each in a
fresh process. The validation is the one `mbtasks evaluate` runs: the task's data module on a COCO-format folder
(the annotation file and a JPEG of each image's size), its LightningModule, Lightning's validation loop; only the
network is replaced, by stored outputs. What is timed is the task's own part (each validation_step's conversion to
COCO results, and the epoch's end: results gathered, every image checked, coco_metrics), not reading the images.

Toy size, as tests/test_bench.py runs it: --runs 2 --train-steps 1 --train-batch 2 --threads 1 --eval-images 8
--eval-detections 5 --eval-repeats 1.
"""

import contextlib
import io
import json
import logging
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
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
)
from pycocotools.coco import COCO

from mbtasks import build_model
from mbtasks.config import load_config
from mbtasks.evaluation.coco import STAT_NAMES
from mbtasks.layers.fusion import for_inference
from mbtasks.models.importers import import_weights

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


def _child(which: str, steps: int, batch_size: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(tmp)
    model = reference if which == "torchvision" else ours
    throughput = train_throughput(model, steps, batch_size)
    queue.put((which, throughput, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def task_classes() -> tuple[type, type]:
    """(data module, LightningModule) of the det task: the bench's one use of the task registry."""
    from mbtasks.tasks import TASKS  # imported here: the fresh processes that time no task skip Lightning's import

    task = TASKS.get("det")
    return task.data_module, task


class StoredAnswers(torch.nn.Module):
    """Stands for the network in validation: answers each image with the next stored output, in the validation
    set's order (the order its loader gives in one process), starting over after the last; an image of another size
    than the stored output's is refused, so answers out of step with the images fail instead of scoring wrong."""

    def __init__(self, outputs: list[tuple[tuple[int, int], dict]]):
        super().__init__()
        self.outputs, self.next = outputs, 0

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        answers = []
        for image in images:
            size, output = self.outputs[self.next]
            if tuple(image.shape[-2:]) != size:
                raise RuntimeError(
                    f"image {self.next} of the validation set is {tuple(image.shape[-2:])}, its stored "
                    f"output is for {size}: the answers are out of step with the loader"
                )
            answers.append(output)
            self.next = (self.next + 1) % len(self.outputs)
        return answers


def validation_set(images: int, per_image: int, seed: int = 0) -> tuple[dict, list[tuple[tuple[int, int], dict]]]:
    """A COCO-like validation set's annotations (bench/coco_eval.py's make-up), and a detector's outputs for its
    images in id order as validation_step gets them from the network: boxes (xyxy, float32), scores, labels 1..K."""
    generator = np.random.default_rng(seed)
    gt = synthetic_ground_truth(images, generator)
    label_of = {c["id"]: label for label, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]), 1)}
    outputs = {image["id"]: {"boxes": [], "scores": [], "labels": []} for image in gt["images"]}
    for r in synthetic_detections(gt, per_image, generator):
        x, y, w, h = r["bbox"]
        output = outputs[r["image_id"]]
        output["boxes"].append([x, y, x + w, y + h])
        output["scores"].append(r["score"])
        output["labels"].append(label_of[r["category_id"]])
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    return gt, [
        (
            sizes[image_id],
            {
                "boxes": torch.tensor(o["boxes"], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(o["scores"], dtype=torch.float32),
                "labels": torch.tensor(o["labels"], dtype=torch.int64),
            },
        )
        for image_id, o in sorted(outputs.items())
    ]


def write_validation_set(folder: Path, gt: dict) -> Path:
    """The set in COCO's layout under folder: annotations/instances_val2017.json and val2017/ with a grey JPEG of
    each image's size; returns the annotation file."""
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "val2017").mkdir(exist_ok=True)
    path = folder / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(gt))
    encoded = {}
    for image in gt["images"]:
        size = (image["height"], image["width"])
        if size not in encoded:
            encoded[size] = cv2.imencode(".jpg", np.full((*size, 3), 114, np.uint8))[1].tobytes()
        (folder / "val2017" / image["file_name"]).write_bytes(encoded[size])
    return path


def task_timer():
    """A Lightning callback whose `seconds` are what the task spends in a validation epoch once each batch of images
    is loaded: every validation_step (the stored answers looked up, converted to COCO results) and the epoch's end
    (results gathered, every image checked, coco_metrics, the figures logged). Reading the images is not counted."""
    import pytorch_lightning as pl

    class TaskTime(pl.Callback):
        def __init__(self):
            self.seconds, self.start = 0.0, 0.0

        def on_validation_epoch_start(self, trainer, module) -> None:
            self.seconds = 0.0

        def on_validation_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_validation_batch_end(self, *args) -> None:
            self.seconds += time.perf_counter() - self.start

        def on_validation_epoch_end(self, trainer, module) -> None:  # Lightning calls it before the module's own
            self.start = time.perf_counter()

        def on_validation_end(self, trainer, module) -> None:
            self.seconds += time.perf_counter() - self.start

    return TaskTime()


class ValidationRun:
    """The detection task validated as `mbtasks evaluate` validates it (the task's data module on the COCO folder,
    its LightningModule, Lightning's validation loop through mbtasks' trainer), the network answering with
    `outputs`. Calling it runs one validation: (seconds of the task's own part, task_timer's; the 12 figures it
    logged). `task.results` holds the last run's COCO results."""

    def __init__(self, folder: Path, outputs: list):
        from mbtasks.tasks.trainer import build_trainer

        for name in ("pytorch_lightning", "lightning", "lightning_fabric"):  # their banners, as mbtasks' commands
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")  # inside Lightning
        # One image a batch: the images held are left out of the peak memory, which is the scoring's.
        config = load_config(
            None,
            [
                f"data.root={folder}",
                "data.num_workers=0",
                "data.val_batch_size=1",
                "model.name=ssdlite320_mobilenet_v3_small",
                "model.options={width_mult: 0.25}",
                "train.accelerator=cpu",
                "train.progress_bar=false",
                f"train.out_dir={folder}/run",
            ],
            task="det",
        )
        data_module, task_module = task_classes()
        self.data = data_module(config)
        self.data.setup("validate")
        self.task = task_module(config.to_dict(), self.data.class_names, self.data.category_ids)
        self.task.model = StoredAnswers(outputs)
        self.images, self.timer = len(outputs), task_timer()
        self.trainer = build_trainer(config, "", for_fit=False)
        self.trainer.callbacks.append(self.timer)

    def __call__(self) -> tuple[float, list[float]]:
        self.trainer.validate(self.task, datamodule=self.data, verbose=False)
        if self.task.evaluated_images != self.images:
            raise RuntimeError(f"validation scored {self.task.evaluated_images} of {self.images} images")
        return self.timer.seconds, [self.task.metrics[name] for name in STAT_NAMES]


def pycocotools_alone(annotation_file: Path, results: list[dict]) -> list[float]:
    """pycocotools on the same detections: the annotation file read, loadRes, COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    return plain_pycocotools(gt, results)


def gathered_results(task) -> list[dict]:
    """The COCO results of the task's last validation epoch, in the order its score reads them."""
    return [d for image_id in sorted(task.results) for d in task.results[image_id]]


def _epoch_setup(folder: str, images: int, per_image: int) -> Callable:
    return ValidationRun(Path(folder), validation_set(images, per_image)[1])


def _pycocotools_setup(folder: str, images: int, per_image: int) -> Callable:
    results = json.loads((Path(folder) / "results.json").read_text())
    return lambda: pycocotools_alone(Path(folder) / "annotations" / "instances_val2017.json", results)


def validation_scoring(images: int, per_image: int, repeats: int) -> None:
    """Print the scoring of one validation epoch against pycocotools alone (seconds, speed-up, memory)."""
    with tempfile.TemporaryDirectory() as folder:
        gt, outputs = validation_set(images, per_image)
        annotation_file = write_validation_set(Path(folder), gt)
        validate = ValidationRun(Path(folder), outputs)
        validate()  # the first run warms up Lightning's loop; its results are pycocotools' input
        results = gathered_results(validate.task)
        (Path(folder) / "results.json").write_text(json.dumps(results))  # for the fresh process of the memory run
        anchor, ours = "pycocotools alone (file, loadRes, COCOeval)", "mbtasks validation epoch scoring"
        seconds, figures = {anchor: [], ours: []}, {}
        for _ in range(repeats):  # in turn, so that machine noise falls on both alike
            start = time.perf_counter()
            figures[anchor] = pycocotools_alone(annotation_file, results)
            seconds[anchor].append(time.perf_counter() - start)
            took, figures[ours] = validate()
            seconds[ours].append(took)
        print(
            f"scoring one validation epoch, {images} images x {per_image} detections ({len(results)} results), "
            f"seconds over {repeats} repeats in turn, min / median / max:"
        )
        for name in (anchor, ours):
            speedup = [a / b for a, b in zip(seconds[anchor], seconds[name])]
            print(
                f"  {name:<45} {spread(seconds[name], ' s')}   speed-up {spread(speedup, 'x')}   "
                f"{figures_against(figures[name], figures[anchor])}"
            )
        print("  peak memory above the data (peak RSS, one run each in a fresh process):")
        for name, setup, what in ((anchor, _pycocotools_setup, ""), (ours, _epoch_setup, ", reading the images too")):
            took, megabytes = peak_memory(setup, folder, images, per_image)
            print(f"  {name:<45} {megabytes:7.0f} MB  (that run {took:.2f} s{what})")


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=at_least(1), default=50)
    parser.add_argument("--train-steps", type=at_least(1), default=5)
    parser.add_argument("--train-batch", type=at_least(1), default=32, help="images per training step")
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
        process = context.Process(target=_child, args=(which, args.train_steps, args.train_batch, args.threads, queue))
        process.start()
        name, throughput, peak = queue.get()
        process.join()
        results[name] = (throughput, peak)
    (tv_steps, tv_mb), (mb_steps, mb_mb) = results["torchvision"], results["mbtasks"]
    tv_ips, mb_ips = statistics.median(tv_steps), statistics.median(mb_steps)
    print(
        f"training, batch {args.train_batch}, {args.train_steps} steps, images/s min / median / max: torchvision "
        f"{spread(tv_steps, '', 1)}, mbtasks {spread(mb_steps, '', 1)} (ratio of medians {mb_ips / tv_ips:.3f}); "
        f"peak memory torchvision {tv_mb:.0f} MB, mbtasks {mb_mb:.0f} MB (ratio {mb_mb / tv_mb:.3f})"
    )

    print("evaluation against plain pycocotools (bench/coco_eval.py):")
    sys.stdout.flush()  # its lines after this process's own
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("coco_eval.py")),
            "--images",
            str(args.eval_images),
            "--detections",
            str(args.eval_detections),
            "--repeats",
            "1",
        ],
        check=True,
    )
    validation_scoring(args.eval_images, args.eval_detections, args.eval_repeats)


if __name__ == "__main__":
    main()
