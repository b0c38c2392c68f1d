"""A sixth task from outside mbtasks, registered through the `mbtasks.tasks` entry-point group: counting the circles,
squares and triangles drawn on an image. One file holds its data format (PNG images and a counts.csv per split) with
its embedded writer, its data module, and its task: a MobileNet classifier whose outputs are the counts, an L1 loss,
and the mean absolute error and exact-count accuracy of every validation."""

import csv
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import Dataset

from mbtasks.backbones import BACKBONES
from mbtasks.config import Config
from mbtasks.datasets.formats import FORMATS, DataFormat
from mbtasks.datasets.imagefolder import apply_transform
from mbtasks.drawing import write_png, write_text
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image
from mbtasks.tasks import TASKS, BaseTask
from mbtasks.tasks.image_data import ImageDataModule, Indexed

KINDS = ("circle", "square", "triangle")
GRID = 3  # shapes sit in cells of a GRID x GRID grid, one a cell: none overlaps another, so every one can be counted


def write_shape_counts(
    out_dir: str | Path,
    seed: int = 0,
    train_images: int = 400,
    val_images: int = 100,
    size: int = 64,
    max_per_kind: int = 3,
) -> Path:
    """out_dir/{train,val}/NNNN.png with out_dir/{train,val}/counts.csv (file, then one count per kind): up to
    `max_per_kind` shapes of each kind, in random cells, sizes and colours on a noisy grey background."""
    if max_per_kind * len(KINDS) > GRID * GRID:
        raise MbtasksError(
            f"max_per_kind must be at most {GRID * GRID // len(KINDS)} (one shape a cell of the "
            f"{GRID}x{GRID} grid), got {max_per_kind}",
            out_dir,
        )
    out_dir, rng = Path(out_dir), np.random.default_rng(seed)
    for split, count in (("train", train_images), ("val", val_images)):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(count):
            counts = [int(rng.integers(0, max_per_kind + 1)) for _ in KINDS]
            name = f"{index:04d}.png"
            _draw(counts, size, rng).save(out_dir / split / name)
            rows.append([name, *counts])
        with open(out_dir / split / "counts.csv", "w", newline="") as f:
            csv.writer(f).writerows([["file", *KINDS], *rows])
    return out_dir


def _draw(counts: list[int], size: int, rng: np.random.Generator) -> Image.Image:
    """One image: counts[k] shapes of KINDS[k], each in a cell of its own."""
    grey = rng.integers(90, 140)
    background = np.clip(grey + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw, cell = ImageDraw.Draw(image), size / GRID
    cells = rng.permutation(GRID * GRID)
    shapes = [kind for kind, count in zip(KINDS, counts) for _ in range(count)]
    for kind, place in zip(shapes, cells):
        radius = cell / 2 * rng.uniform(0.55, 0.85)
        cx, cy = (place % GRID + 0.5) * cell, (place // GRID + 0.5) * cell
        colour = tuple(int(v) for v in rng.choice([rng.integers(0, 50), rng.integers(200, 256)], 3))
        if kind == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        else:
            corners, turn = (4, math.pi / 4) if kind == "square" else (3, -math.pi / 2)
            draw.polygon(
                [
                    (
                        cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                        cy + radius * math.sin(turn + 2 * math.pi * k / corners),
                    )
                    for k in range(corners)
                ],
                fill=colour,
            )
    return image


class ShapeCounts(Dataset):
    """One split: images listed in `folder`/counts.csv with a count per kind (the header's columns after `file`).
    Items: (image, counts as float32)."""

    def __init__(self, folder: str | Path, transform=None):
        self.folder, self.transform = Path(folder), transform
        table = self.folder / "counts.csv"
        if not table.is_file():
            raise MbtasksError("no counts.csv: not a shape-count split", self.folder)
        with open(table, newline="") as f:
            header, *rows = list(csv.reader(f))
        if header[:1] != ["file"] or len(header) < 2:
            raise MbtasksError(f"header must be file followed by the kinds, got {','.join(header)}", table)
        self.kinds = header[1:]
        try:
            self.samples = [(row[0], np.array(row[1:], dtype=np.float32)) for row in rows]
        except ValueError as error:
            raise MbtasksError(f"a count is not a number ({error})", table) from None
        if any(len(counts) != len(self.kinds) for _, counts in self.samples):
            raise MbtasksError(f"every row needs a file and {len(self.kinds)} counts", table)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        name, counts = self.samples[index]
        return apply_transform(self.transform, read_rgb_image(self.folder / name)), torch.from_numpy(counts)


@FORMATS.register("shape_counts")
class ShapeCountsFormat(DataFormat):
    """The count task's format: train/ and val/ of PNGs, each with its counts.csv; its embedded set is drawn."""

    kind = "count"
    layout = "train/ and val/ with counts.csv"
    write_synthetic = staticmethod(write_shape_counts)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return any((root / split / "counts.csv").is_file() for split in cls.splits)

    def dataset(self, split: str, transform) -> ShapeCounts:
        return ShapeCounts(self.root / split, transform)


class ShapeCountDataModule(ImageDataModule):
    """Splits train/ and val/ (data.train_split, data.val_split) of PNGs with their counts.csv under data.root, or the
    embedded set. Images are resized whole: a random crop would cut shapes off and change the counts."""

    format_kind, default_format = "count", "shape_counts"
    default_size, default_augmentation = 64, "none"

    def __init__(self, config: Config):
        super().__init__(config)
        if config.data.augmentation not in ("default", "none"):
            raise MbtasksError(
                f"data.augmentation for count must be none (a crop changes the counts), got "
                f"{config.data.augmentation!r}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            split = self.config.data.val_split or self.format.splits[1]
            self.val_set = Indexed(self.format.dataset(split, self.transform(False)))
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = self.transform(True)
            split = self.config.data.train_split or self.format.splits[0]
            self.train_set = Indexed(self.format.dataset(split, self.train_transform))

    @property
    def class_names(self) -> list[str]:
        return list(self.val_set.dataset.kinds)


@TASKS.register("count")
class ShapeCountTask(BaseTask):
    """A MobileNet classifier with one output per kind read as its count, L1 loss; per kind and over all, the mean
    absolute error and the share of images whose rounded count is right. The best checkpoint has the lowest error."""

    data_module = ShapeCountDataModule
    monitor, default_model = "val/negative_mae", "mobilenet_v3_small"  # higher is better: the error's negative
    demo_recipe = str(Path(__file__).with_name("shape_count.yaml"))  # beside this file, not a packaged recipe
    headline_metrics, profile_classes = ("mean_absolute_error",), len(KINDS)
    graph_outputs = ("counts",)
    progress_bar = ("val/mae", "val/exact")
    prediction_file = "counts.json"

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        if name not in BACKBONES:
            raise MbtasksError(f"model.name for count must be a classifier ({', '.join(BACKBONES)}), got {name!r}")
        return name, {**options, "num_classes": len(self.class_names)}

    def build_loss(self) -> nn.Module:
        return nn.L1Loss()

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images, counts = batch
        predicted = self.model(images).float().cpu().numpy()
        for index, guess, truth in zip(indices.tolist(), predicted, counts.cpu().numpy()):
            self.results[index] = (guess, truth)

    def score(self, merged: dict) -> dict:
        if not merged:
            return {}
        guesses = np.stack([merged[i][0] for i in sorted(merged)])
        truths = np.stack([merged[i][1] for i in sorted(merged)])
        errors, right = np.abs(guesses - truths), np.rint(np.clip(guesses, 0, None)) == truths
        return {
            "mean_absolute_error": float(errors.mean()),
            "exact_accuracy": float(right.all(axis=1).mean()),
            "per_kind": {
                kind: {"mean_absolute_error": float(errors[:, k].mean()), "accuracy": float(right[:, k].mean())}
                for k, kind in enumerate(self.class_names)
            },
            "num_images": len(merged),
        }

    def figures(self, metrics: dict) -> dict:
        if not metrics:
            return {}
        error = metrics["mean_absolute_error"]
        return {"val/negative_mae": -error, "val/mae": error, "val/exact": metrics["exact_accuracy"]}

    def metrics_table(self) -> str:
        if not self.metrics:
            return "no images evaluated"
        lines = [f"{'kind':<12}{'MAE':>8}{'accuracy':>10}", "-" * 30]
        for kind, values in self.metrics["per_kind"].items():
            lines.append(f"{kind:<12}{values['mean_absolute_error']:>8.4f}{values['accuracy']:>10.4f}")
        lines += [
            "-" * 30,
            f"{'all':<12}{self.metrics['mean_absolute_error']:>8.4f}",
            f"every count right: {self.metrics['exact_accuracy']:.4f}",
        ]
        return "\n".join(lines)

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        """The count of each kind (the network's output rounded, at least 0; and as it gave it) and their total, in
        the entry and on the photo."""
        raw = {kind: float(value) for kind, value in zip(self.class_names, answer)}
        counts = {kind: max(0, round(value)) for kind, value in raw.items()}
        lines = [f"{kind} {counts[kind]} ({value:.2f})" for kind, value in raw.items()]
        write_png(out / item["name"], write_text(item["photo"], [*lines, f"total {sum(counts.values())}"]))
        return {
            "file": item["file"],
            "counts": counts,
            "total": sum(counts.values()),
            "raw": {kind: round(value, 4) for kind, value in raw.items()},
        }
