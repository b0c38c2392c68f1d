"""FORMATS: the data formats a task's data can be in, each carrying what differs between data sets (reader, classes,
crop, colours, scoring, saved predictions, embedded set), so that no task switches on a data set's name."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mbtasks.drawing import write_png
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.segmentation import ConfusionMatrix
from mbtasks.io.images import read_label_png
from mbtasks.registry import Registry

FORMATS = Registry("data format", group="mbtasks.formats", name_attribute="name")
FORMATS.__doc__ = """Data formats by name. A registered object is a DataFormat subclass of one `kind` (the tasks that
read it: SegmentationFormat, DetectionFormat, or DataFormat itself for the image-level kinds), registered where it is
defined, `@FORMATS.register("folder")`, which sets its `name`. `Format(root)` is the format of the data under `root`;
it reads nothing until asked. A task's data module reads its data through the format `data.format` names, or else
the one of its kind that recognises the root (`sniff`). Third-party packages add formats through the entry-point
group `mbtasks.formats`: one file, one registered class."""


class DataFormat:
    """A data format: how a root in it is recognised, its split names, and its embedded set."""

    name: ClassVar[str] = ""  # set by FORMATS.register
    kind: ClassVar[str] = ""  # segmentation, detection, attributes, embeddings or classification
    layout: ClassVar[str] = ""  # what a root in it holds, for the error when no format recognises a root
    splits: ClassVar[tuple[str, str]] = ("train", "val")  # what data.train_split and data.val_split default to
    write_synthetic: ClassVar[Callable[..., Any] | None] = None  # its embedded set: writer(folder, **data.synth)

    def __init__(self, root: str | Path | None = None):
        """A reader of the format.

        Args:
            root: the data's folder (`data.root`); None for the embedded set, written by `write_synthetic`.
        """
        self.root = None if root is None else Path(root)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        """Whether `root` is laid out in this format: a look at its folders, nothing read."""
        return False

    def synthetic_writer(self) -> Callable[..., Any]:
        """`write_synthetic`, or the one-line error that this format has no embedded set."""
        if self.write_synthetic is None:
            raise MbtasksError(f"data format {self.name!r} has no embedded data set: give its data (data.root)")
        return self.write_synthetic


def formats_of(kind: str) -> list[str]:
    """The names of the formats of one kind, built-in first."""
    return [name for name, entry in FORMATS.items() if entry.kind == kind]


def data_format(kind: str, name: str, root: str | Path | None) -> DataFormat:
    """The format `name` of the data under `root`; a name of no format, or of another kind's, is one line."""
    entry = FORMATS.get(name)
    if entry.kind != kind:
        raise MbtasksError(
            f"data.format {name!r} is a {entry.kind} format; this task reads {kind} formats: "
            f"{', '.join(formats_of(kind))}"
        )
    return entry(root)


def recognised_format(kind: str, root: Path, fallback: str) -> str:
    """The name of the format of `kind` that recognises `root`'s layout, the first registered where several do;
    `fallback` where the root is not a folder, or where the kind has one format (its reader then names what is
    missing). A root no format of several recognises is one line naming each one's layout."""
    names = formats_of(kind)
    if not root.is_dir():
        return fallback
    found = [name for name in names if FORMATS[name].sniff(root)]
    if found or len(names) == 1:
        return (found or names)[0]
    layouts = "; ".join(f"{name}: {FORMATS[name].layout}" for name in names)
    raise MbtasksError(f"in no {kind} format known ({layouts}); set data.format to read it as one", root)


class SegmentationFormat(DataFormat):
    """A segmentation format. Its data set's items are dicts: image, mask (class indices; `ignore_index` where no
    class is given), image_path, label_path. Validation turns each image's prediction (class indices) into counts
    that merge over images and processes; by default a confusion matrix (mIoU), with predictions saved as palette PNGs
    of class indices named after their images, in one folder."""

    kind = "segmentation"
    ignore_index: ClassVar[int] = 255  # the masks' value where no class is given (a reader maps its files' own to it)
    default_crop: ClassVar[tuple[int, int]] = (512, 512)  # training crop (height, width) when data.size is not set
    fixed_classes: ClassVar[tuple[str, ...] | None] = None  # the class names, where the format fixes them

    def dataset(self, split: str, transform: Callable | None) -> Dataset:
        """The items of `split`; `transform(image=..., mask=...)` as albumentations pipelines are called."""
        raise NotImplementedError

    def validation_set(self, split: str, transform: Callable | None) -> Dataset:
        """The items validation scores (`image_counts` reads them): by default the data set's."""
        return self.dataset(split, transform)

    @property
    def class_names(self) -> list[str]:
        return list(self.fixed_classes or ())

    def palette(self) -> np.ndarray:
        """The colour (uint8 RGB) of each class index: rows 0..classes-1 at least."""
        raise NotImplementedError

    # ---- scoring ----

    def counts(self, class_names: list[str]) -> Any:
        """Empty counts, which `merge` others and give the metrics (`result`) and the confusion over the classes
        (`class_confusion`: counts with ground truth in rows, and the classes' names)."""
        return ConfusionMatrix(len(class_names), self.ignore_index, class_names)

    def image_counts(self, prediction: np.ndarray, item: dict, class_names: list[str]) -> Any:
        """One validation item's counts for its prediction (HxW class indices)."""
        counts = self.counts(class_names)
        counts.update(prediction, np.asarray(item["mask"]))
        return counts

    def metrics(self, counts: Any) -> dict:
        """The metrics of merged counts (the figures, the table and `evaluate --json` read them)."""
        return counts.result()

    def figures(self, metrics: dict) -> dict[str, float]:
        """What is logged at the end of validation; the segmentation task's monitor, val/mIoU, among them."""
        return {"val/mIoU": metrics["mean_iou"], "val/pixel_accuracy": metrics["pixel_accuracy"]}

    def class_figures(self, metrics: dict) -> dict[str, dict[str, float]]:
        """Per class, its figures by name (a report's per-class table): IoU and accuracy."""
        accuracy = metrics.get("class_accuracy", {})
        return {name: {"IoU": iou, "accuracy": accuracy.get(name, math.nan)} for name, iou in metrics["iou"].items()}

    def metrics_table(self, metrics: dict) -> str:
        """IoU and accuracy per class, the mean IoU and the pixel accuracy."""
        lines = ["class            IoU    acc", "-" * 28]
        accuracy = metrics.get("class_accuracy", {})
        lines += [
            f"{name:<14}: {iou:>5.3f}  {accuracy.get(name, math.nan):>5.3f}" for name, iou in metrics["iou"].items()
        ]
        lines += [
            "-" * 28,
            f"mIoU          : {metrics['mean_iou']:5.3f}",
            f"pixel accuracy: {metrics['pixel_accuracy']:5.3f}",
        ]
        return "\n".join(lines)

    # ---- saved predictions: evaluate --save-predictions, predict's labels/ ----

    def saved_name(self, image_path: str) -> PurePath:
        """The name a validation image's prediction is saved under."""
        return PurePath(Path(image_path).stem + ".png")

    def prediction_files(self, name: PurePath) -> list[PurePath]:
        """The files `write_prediction` writes for `name`, relative to its folder."""
        return [name]

    def write_prediction(self, out: Path, name: PurePath, prediction: np.ndarray) -> None:
        """Write one prediction (HxW uint8 class indices) under `out`."""
        image = Image.fromarray(prediction)
        # makes it a palette image: indices, seen in colour; all 256 entries, so that PIL writes 8-bit pixels
        given, colours = self.palette()[:256], np.zeros((256, 3), np.uint8)
        colours[: len(given)] = given
        image.putpalette(colours.ravel().tolist())
        write_png(out / name, image)

    def earlier_predictions(self, folder: Path) -> list[Path]:
        """Files in `folder` where saving predictions would write."""
        return sorted(p for p in folder.glob("*.png") if p.is_file())

    def saved_what(self, folder: Path) -> str:
        """What saving predictions to `folder` wrote, after a count of images."""
        return f"palette PNGs of class indices to {folder}"

    def score_folders(self, predictions: Path, split: str) -> tuple[dict, str, int]:
        """Saved predictions (as `write_prediction` writes them) against `split`'s ground truth: (metrics, table,
        images scored)."""
        ground_truth = self.dataset(split, None)
        total = self.counts(self.class_names)
        for index in range(len(ground_truth)):
            item = ground_truth[index]
            path = Path(predictions) / self.prediction_files(self.saved_name(item["image_path"]))[0]
            prediction = read_label_png(path)
            if prediction.shape != item["mask"].shape or prediction.max(initial=0) >= len(self.class_names):
                raise MbtasksError(
                    f"not a prediction of {item['image_path']} ({item['mask'].shape[0]}x"
                    f"{item['mask'].shape[1]}, class indices 0..{len(self.class_names) - 1})",
                    path,
                )
            total.merge(self.image_counts(prediction, item, self.class_names))
        metrics = {**self.metrics(total), "num_images": len(ground_truth)}
        return metrics, self.metrics_table(metrics), len(ground_truth)


class DetectionFormat(DataFormat):
    """A detection format, scored with COCO's box mAP: its data set is a CocoDetection (datasets/coco.py) over its
    ground truth as pycocotools holds it, read from the format's files."""

    kind = "detection"

    def dataset(
        self,
        split: str,
        transforms: Callable | None,
        *,
        train: bool,
        num_classes: int | None = None,
        names_by_id: list[str] | tuple = (),
    ) -> Dataset:
        """`split`'s images and boxes as CocoDetection gives them (labels 1..K, `ground_truth` for COCOeval)."""
        raise NotImplementedError
