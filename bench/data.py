"""Training input pipelines, one run: file -> the network's input, against decoding alone and torchvision's recipes.

Real photos (scikit-image's) in the real layouts (tests/photo_sets.py): COCO JPEGs at 640x480 with boxes
(annotations/instances_train2017.json), and Cityscapes 2048x1024 PNGs with labelIds PNGs. Each pipeline runs from
the file to the tensor the network gets, as the training DataLoader makes it (the dataset's __getitem__, then the
collate function, batch by batch), in one process on one thread (torch and OpenCV):

- decode: the file(s) alone, through mbtasks' readers (libspng for 8-bit PNGs, OpenCV for JPEGs);
- torchvision: its reference recipes in transforms.v2 on its own datasets (PIL): detection's "ssdlite" preset
  (RandomIoUCrop, RandomHorizontalFlip, then Resize to 320x320, which torchvision's model does itself, ToDtype
  float, SanitizeBoundingBoxes) and segmentation's SegmentationPresetTrain at Cityscapes' sizes (RandomResize of the
  short side 512..2048, RandomHorizontalFlip, pad and RandomCrop to 512x1024, PILToTensor, ToDtype, Normalize);
- mbtasks: the training loader of the det and seg recipes (ssdlite320_mobilenet_v3_large_coco and
  lraspp_mobilenet_v3_large_cityscapes in mbtasks/recipes/), with its seeded per-sample augmentation.

The three run in alternation, --repeats times; images/s is printed best, and min / median / max over the repeats,
with the ratios of each repeat. Then the mbtasks loaders with 1, 2, 4 and 8 worker processes (up to --workers),
and the cores each pipeline needs to feed a training step of the recipes' size in --step-time seconds.

    python bench/data.py [--repeats 3] [--workers N] [--det-images 96] [--seg-images 8] [--step-time 0.25]

Toy size, as tests/test_bench.py runs it: --repeats 1 --workers 1 --det-images 24 --seg-images 4 (one batch each).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from mbtasks.config import load_config
from mbtasks.datasets.cityscapes import label_ids_to_train_ids
from mbtasks.io.images import read_label_png, read_rgb_image
from mbtasks.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from arguments import BenchParser, at_least, positive  # bench/arguments.py, beside this script
from photo_sets import write_cityscapes_photos, write_coco_photos  # noqa: E402  (the tests' real-photo sets)

RECIPES = {"det": "ssdlite320_mobilenet_v3_large_coco", "seg": "lraspp_mobilenet_v3_large_cityscapes"}  # packaged
DEVICES = {"det": 8, "seg": 4}  # the recipes' devices: images per step = devices x batch_size
PIPELINES = ("decode", "torchvision", "mbtasks")


def collate_lists(batch: list) -> tuple:
    """torchvision's references/detection/utils.collate_fn."""
    return tuple(zip(*batch))


# ---- torchvision's recipes ----


def torchvision_detection(root: Path, size: int) -> torch.utils.data.Dataset:
    """references/detection with use_v2: CocoDetection wrapped for transforms.v2, the "ssdlite" preset (PIL
    backend), plus the model's resize to size x size (here on the PIL image, its cheapest place)."""
    transforms = v2.Compose(
        [
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.Resize((size, size)),
            v2.PILToTensor(),
            v2.ToDtype(torch.float, scale=True),
            v2.SanitizeBoundingBoxes(),
            v2.ToPureTensor(),
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
        dataset = torchvision.datasets.CocoDetection(
            root / "train2017", root / "annotations" / "instances_train2017.json", transforms=transforms
        )
    return torchvision.datasets.wrap_dataset_for_transforms_v2(dataset, target_keys={"boxes", "labels", "image_id"})


class TrainIds(torch.nn.Module):
    """Cityscapes label ids -> train ids (255 ignored) on the mask; torchvision's recipe has no Cityscapes step."""

    def __init__(self):
        super().__init__()
        self.table = torch.from_numpy(label_ids_to_train_ids(np.arange(34)).astype(np.int64))

    def forward(self, image, mask):
        return image, tv_tensors.Mask(self.table[mask.as_subclass(torch.Tensor)])


def torchvision_segmentation(root: Path, crop: tuple[int, int], base_size: int = 1024) -> torch.utils.data.Dataset:
    """references/segmentation's SegmentationPresetTrain (use_v2, PIL backend) at Cityscapes' sizes, on
    torchvision.datasets.Cityscapes (semantic labelIds), the label ids mapped to train ids at the end."""
    transforms = v2.Compose(
        [
            v2.RandomResize(min_size=int(0.5 * base_size), max_size=int(2.0 * base_size)),
            v2.RandomHorizontalFlip(0.5),
            # the references' PadIfSmaller: pad the bottom and right, images with 0 and masks with 255
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
            v2.PILToTensor(),
            v2.ToDtype(dtype={torch.Tensor: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            TrainIds(),
            v2.ToPureTensor(),
        ]
    )
    dataset = torchvision.datasets.Cityscapes(
        root, split="train", mode="fine", target_type="semantic", transforms=transforms
    )
    return torchvision.datasets.wrap_dataset_for_transforms_v2(dataset)


# ---- the runs ----


def mbtasks_loader(task: str, root: Path, workers: int) -> DataLoader:
    """The recipe's training loader (the task's data module) on root, with `workers` worker processes."""
    config = load_config(RECIPES[task], [f"data.root={root}", f"data.num_workers={workers}"])
    data = TASKS.get(task).data_module(config)
    data.setup("fit")
    return data.train_dataloader()


def timed(batches, images: int) -> float:
    """Images per second to draw `images` images from an iterable of batches (the first item of each, or its
    "image", holds one entry per image)."""
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["image"] if isinstance(batch, dict) else batch[0])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def epochs(loader: DataLoader):
    """A loader's batches, epoch after epoch."""
    while True:
        yield from loader


def in_batches(dataset, collate, batch_size: int, images: int):
    for start in range(0, images, batch_size):
        yield collate([dataset[i % len(dataset)] for i in range(start, start + batch_size)])


def decoded(task: str, root: Path, batch_size: int, images: int):
    """The files decoded, batch by batch: the JPEG; the PNG and its labelIds PNG."""
    if task == "det":
        files = sorted((root / "train2017").glob("*.jpg"))
        read = lambda i: read_rgb_image(files[i % len(files)])  # noqa: E731
    else:
        files = sorted((root / "leftImg8bit" / "train").glob("*/*.png"))
        labels = sorted((root / "gtFine" / "train").glob("*/*_labelIds.png"))
        read = lambda i: (read_rgb_image(files[i % len(files)]), read_label_png(labels[i % len(files)]))  # noqa: E731
    for start in range(0, images, batch_size):
        yield ([read(i) for i in range(start, start + batch_size)],)


def compare(task: str, root: Path, images: int, repeats: int) -> dict[str, list[float]]:
    """images/s of each pipeline per repeat, run in alternation."""
    loader = mbtasks_loader(task, root, workers=0)
    batch_size = loader.batch_size
    if task == "det":
        reference, collate = torchvision_detection(root, 320), collate_lists
    else:
        reference, collate = torchvision_segmentation(root, (512, 1024)), torch.utils.data.default_collate
    runs = {
        "decode": lambda: decoded(task, root, batch_size, images),
        "torchvision": lambda: in_batches(reference, collate, batch_size, images),
        "mbtasks": lambda: epochs(loader),
    }
    rates = {name: [] for name in PIPELINES}
    for repeat in range(repeats + 1):  # the first round warms up (file cache, lazy imports)
        torch.manual_seed(repeat)
        order = PIPELINES[repeat % 3 :] + PIPELINES[: repeat % 3]
        for name in order:
            rate = timed(runs[name](), images)
            if repeat:
                rates[name].append(rate)
    return rates


def spread(values: list[float]) -> str:
    return f"{min(values):7.1f} / {statistics.median(values):7.1f} / {max(values):7.1f}"


def report(task: str, rates: dict[str, list[float]]) -> None:
    print(f"{'images/s, one thread':<22}{'best':>8}   min / median / max over {len(rates['decode'])} repeats")
    for name in PIPELINES:
        print(f"{name:<22}{max(rates[name]):8.1f}   {spread(rates[name])}")
    for ours, anchor in (("mbtasks", "torchvision"), ("mbtasks", "decode"), ("torchvision", "decode")):
        per_repeat = [a / b for a, b in zip(rates[ours], rates[anchor])]
        print(
            f"{ours + ' / ' + anchor:<22}{max(rates[ours]) / max(rates[anchor]):8.2f}x  "
            f"per repeat {min(per_repeat):.2f} / {statistics.median(per_repeat):.2f} / {max(per_repeat):.2f}"
        )


def scaling(task: str, root: Path, max_workers: int, images: int) -> list[tuple[int, float]]:
    """images/s of the mbtasks training loader with 1, 2, 4, 8 workers (up to max_workers), after a warm-up."""
    rows = []
    for workers in (w for w in (1, 2, 4, 8) if w <= max_workers):
        batches = epochs(mbtasks_loader(task, root, workers))
        next(batches)  # workers started and their first batches under way
        rows.append((workers, timed(batches, images)))
        batches.close()
    return rows


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=at_least(1), default=3, help="timed runs of each pipeline (default 3)")
    parser.add_argument(
        "--workers",
        type=at_least(0),
        default=os.cpu_count(),
        help="most loader workers in the scaling figure, 0 for none (default: the CPU count)",
    )
    parser.add_argument("--det-images", type=at_least(1), default=96, help="images per detection run")
    parser.add_argument("--seg-images", type=at_least(1), default=8, help="images per segmentation run")
    parser.add_argument(
        "--step-time", type=positive, default=0.25, help="seconds per training step for the cores table (default 0.25)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, opencv {cv2.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {
            "det": write_coco_photos(Path(tmp) / "coco", splits=("train2017", "val2017"), copies=10),
            "seg": write_cityscapes_photos(Path(tmp) / "cityscapes", images=8, splits=("train", "val")),
        }
        for task, what, images in (
            ("det", "COCO JPEG 640x480 -> SSDLite input 320x320 + boxes, batch 24", args.det_images),
            ("seg", "Cityscapes PNG 2048x1024 + labelIds -> 512x1024 crop + train ids, batch 4", args.seg_images),
        ):
            print(f"\n{task}: {what}")
            rates = compare(task, roots[task], images, args.repeats)
            report(task, rates)
            medians[task] = {name: statistics.median(rates[name]) for name in PIPELINES}
            if args.workers:
                print(f"mbtasks training loader, {images * 2} images after the first batch:")
                for workers, rate in scaling(task, roots[task], args.workers, images * 2):
                    print(f"  {workers} workers  {rate:7.1f} images/s")
    print(f"\ncores to feed one training step every {args.step_time} s, at the median one-thread rates above")
    for task in ("det", "seg"):
        config = load_config(RECIPES[task], [])
        per_step = DEVICES[task] * config.data.batch_size
        need = per_step / args.step_time
        print(
            f"{task}: {DEVICES[task]} x {config.data.batch_size} = {per_step} images per step -> {need:.0f} images/s: "
            + ", ".join(f"{name} {need / medians[task][name]:.1f}" for name in PIPELINES)
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
