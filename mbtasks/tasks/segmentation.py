"""Segmentation: data in a segmentation format (Cityscapes, VOC, a plain folder of masks), LR-ASPP / DeepLabv3
models, the format's metrics each epoch.

Validation runs on whole images at their own resolution and scores them as the data's format does (Cityscapes: label
ids through the official evaluation, IoU and iIoU per class and category; the others: the confusion-matrix mIoU).
Each image's counts are kept under its path and merged over processes once per image, so DDP gives the figures of one
process.
"""

import copy
import json
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path, PurePath

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..config import Config
from ..datasets.formats import FORMATS, SegmentationFormat, data_format, formats_of, recognised_format
from ..datasets.image_transforms import IMAGENET_MEAN, IMAGENET_STD, displayable, enlarged
from ..datasets.segmentation_transforms import (
    normalise_batch,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)
from ..drawing import blend, draw_legend, write_picture
from ..errors import MbtasksError
from ..evaluation.report import Gallery, Picture, Section, Table
from ..evaluation.report_charts import bar_chart, confusion_matrix
from ..io.outputs import write_text_atomically
from ..models import check_num_classes
from ..models.segmenters import GraphAsSegmenter, LogitsGraph
from ..sizes import height_width
from .base import BaseDataModule, BaseTask
from .registry import TASKS

# data.augmentation -> the random-scale range of the training crops (mmseg's recipe is 0.5..2.0)
AUGMENTATIONS = {"default": (0.5, 2.0), "light": (0.75, 1.5), "fixed_scale": (1.0, 1.0)}
# Validation stacks same-sized images up to this many pixels per forward pass (two 1024x2048 images), so a large
# data.val_batch_size cannot run full-resolution inference out of memory.
MAX_PIXELS_PER_FORWARD = 2 * 1024 * 2048


def label_name(name: str) -> PurePath:
    """A photo's label PNG name: its output name in .png whatever its picture's format (labels are ids, kept exact)."""
    return PurePath(name).with_suffix(".png")


def keep_list(batch: list) -> list:
    """Validation batches stay lists of items: images may differ in size, and inference chunks them itself."""
    return batch


class SegmentationDataModule(BaseDataModule):
    """Data in a segmentation format under data.root (a Cityscapes root, a VOC 2012 root, a folder of images and
    masks), or the embedded street scenes."""

    format_kind, default_format = "segmentation", "cityscapes"
    val_collate = staticmethod(keep_list)
    graph_input = itemgetter("image")

    def __init__(self, config: Config | dict):
        super().__init__(config)
        data = self.config.data
        size = data.size or self.format.default_crop
        self.crop_size = height_width(size)
        if data.augmentation not in AUGMENTATIONS:
            raise MbtasksError(
                f"data.augmentation must be one of {', '.join(AUGMENTATIONS)} for seg, got {data.augmentation!r}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = self.format.validation_set(self.val_split, segmentation_eval_transforms())
        if stage in (None, "fit") and self.train_set is None:
            scales = AUGMENTATIONS[self.config.data.augmentation]
            self.train_transform = segmentation_train_transforms(
                self.crop_size, scales, ignore_index=self.format.ignore_index, seed=self.config.train.seed
            )
            self.train_set = self.format.dataset(self.train_split, self.train_transform)

    def sample_for_drawing(self, item: dict, zoom: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The image (training's HWC uint8, evaluation's normalised floats) and its mask of class indices."""
        mask = item["mask"]
        mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        return displayable(item["image"], normalised=True, zoom=zoom), enlarged(mask, zoom)

    def unaugmented_train_set(self) -> Dataset:
        images = copy.copy(self.train_set)
        images.transform = segmentation_eval_transforms()
        return images

    @classmethod
    def predict_transform(cls, config: Config) -> Callable:
        return segmentation_eval_transforms()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches come from the loader as NHWC uint8 (a quarter of the bytes to copy, pin and send) and are
        normalised here, on the device; evaluation's (lists of normalised items) pass unchanged."""
        return normalise_batch(batch, self.model_dtype()) if isinstance(batch, dict) else batch

    @property
    def class_names(self) -> list[str]:
        return self.format.class_names


@TASKS.register("seg")
class SegmentationTask(BaseTask):
    """A segmentation model, its cross-entropy (+ aux) loss, and its data format's metrics over the whole val set."""

    data_module = SegmentationDataModule
    monitor, default_model, demo_recipe = "val/mIoU", "lraspp_mobilenet_v3_large", "seg_cityscapes_synth"
    headline_metrics, profile_classes = ("mean_class_iou", "mean_iou"), 19  # Cityscapes first, then the others
    ablation_head = "deeplabv3"
    progress_bar = ("val/mIoU",)
    prediction_defaults = {"scales": None, "flip": False}
    prediction_file = "segmentation.json"
    legacy_format = "voc"  # what a checkpoint from before data.format was in, unless its classes are a format's own

    def on_network_built(self) -> None:
        data = self.config.data
        # The recipe's format; the data module's, where there is one, takes its place in setup
        self.format: SegmentationFormat = data_format(
            "segmentation", data.format or self._legacy_format(), data.root if data.root is not None else data.synth_dir
        )

    def _legacy_format(self) -> str:
        """The format a checkpoint without data.format was trained in, told by its classes as it was then."""
        fixed = [
            name for name in formats_of("segmentation") if list(FORMATS[name].fixed_classes or ()) == self.class_names
        ]
        return fixed[0] if fixed else self.legacy_format

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None)
        if isinstance(getattr(data, "format", None), SegmentationFormat):
            self.format = data.format

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        check_num_classes(options, len(self.class_names))
        return name, {**options, "num_classes": len(self.class_names)}

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        loss = self.model.loss(self.model(images), masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    # ---- export: the "out" logits as one tensor; the exported graph behind the segmenter contract again ----

    @classmethod
    def graph(cls, model: nn.Module) -> nn.Module:
        return LogitsGraph(model)

    @classmethod
    def runtime_model(cls, session, settings: dict, path: str | Path, runtime: str = "onnxruntime") -> nn.Module:
        return GraphAsSegmenter(super().runtime_model(session, settings, path, runtime))

    @classmethod
    def graph_dynamic_axes(cls, size: dict[int, str]) -> dict:
        """Logits at the input resolution: their height and width follow the input's."""
        axes = super().graph_dynamic_axes(size)
        axes["logits"].update(size)
        return axes

    @classmethod
    def score_files(cls, options: dict) -> tuple[dict, str, int | None] | None:
        """Saved predictions (--predictions) against a data root (--gt), scored as its format scores them: a folder
        of Cityscapes labelId PNGs as the official script does, a folder of class-index PNGs by the mIoU."""
        if not (options.get("gt") or options.get("predictions")):
            return None
        if not (options.get("gt") and options.get("predictions")):
            raise MbtasksError("scoring saved predictions needs both --gt and --predictions")
        root, default = Path(options["gt"]), cls.data_module.default_format
        scored = data_format("segmentation", recognised_format("segmentation", root, default), root)
        return scored.score_folders(Path(options["predictions"]), options.get("split", "val"))

    # ---- inference ----

    def predict_class_indices(
        self, images: torch.Tensor, scales: list[float] | None = None, flip: bool = False
    ) -> torch.Tensor:
        """Class index per pixel (N, H, W) at the input resolution; multi-scale (`scales`) and flipped inference."""
        scales = scales or [1.0]
        if scales == [1.0] and not flip:
            return self.model(images)["out"].argmax(1)
        size = images.shape[-2:]
        total = None
        for scale in scales:
            scaled = (
                images
                if scale == 1.0
                else F.interpolate(
                    images, size=(round(size[0] * scale), round(size[1] * scale)), mode="bilinear", align_corners=False
                )
            )
            for flipped in [False, True] if flip else [False]:
                x = scaled.flip(-1) if flipped else scaled
                logits = self.model(x)["out"]
                logits = logits.flip(-1) if flipped else logits
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                # mmseg's aug_test: the mean of the softmax scores
                probabilities = logits.softmax(1)
                total = probabilities if total is None else total + probabilities
        return total.argmax(1)

    def _predict(self, images: list[torch.Tensor], options: dict) -> list[np.ndarray]:
        """Per image, its prediction as an HxW uint8 numpy array; same-sized images go through in chunks. Options:
        `scales` and `flip` (multi-scale and flipped inference)."""
        predictions, start = [], 0
        while start < len(images):
            shape = images[start].shape
            per_forward = max(1, MAX_PIXELS_PER_FORWARD // (shape[-2] * shape[-1]))
            end = start + 1
            while end < len(images) and end - start < per_forward and images[end].shape == shape:
                end += 1
            chunk = torch.stack(images[start:end]).to(self.device)
            indices = self.predict_class_indices(chunk, options.get("scales"), bool(options.get("flip")))
            predictions += list(indices.to(torch.uint8).cpu().numpy())
            start = end
        return predictions

    # ---- validation ----

    def validation_step(self, batch: list[dict], batch_index: int) -> None:
        save_dir = None if self.trainer.sanity_checking else self.evaluation_options.get("save_predictions")
        predictions = self._predict([item["image"] for item in batch], self.evaluation_options)
        for item, prediction in zip(batch, predictions, strict=True):
            # image path -> that image's counts
            self.results[item["image_path"]] = self.format.image_counts(prediction, item, self.class_names)
            if save_dir:
                self.format.write_prediction(Path(save_dir), self.format.saved_name(item["image_path"]), prediction)

    def earlier_predictions(self, folder: Path) -> list[Path]:
        """Files in `folder` where `evaluate --save-predictions` would write, before it runs (the format says)."""
        return self.format.earlier_predictions(folder)

    # ---- predict ----

    def predict_inputs(self, inputs: list[torch.Tensor]) -> list:
        return self._predict(inputs, self.prediction_options)

    def draw_answer(self, photo: np.ndarray, answer: np.ndarray) -> np.ndarray:
        """The class colours (the data format's palette) blended on the photo, and a legend of the classes present,
        the largest first; pixels of no class (a ground truth's ignore index) keep the photo's colours."""
        answer = np.asarray(answer).astype(np.int64)
        classes = len(self.class_names)
        colours = np.zeros((max(256, int(answer.max(initial=0)) + 1), 3), np.uint8)
        colours[:classes] = self.format.palette()[:classes]
        picture = blend(photo, colours[answer])
        unlabelled = answer >= classes
        picture[unlabelled] = photo[unlabelled]
        counts = np.bincount(answer[~unlabelled].ravel(), minlength=classes)
        present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
        return draw_legend(picture, [self.class_names[i] for i in present], colours[present])

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        """overlay/<name>: `draw_answer`'s picture; labels/<name as .png>: the label PNG in the data format's results
        layout (as `evaluate --save-predictions`); the entry: the share of the pixels of each class."""
        write_picture(out / "overlay" / item["name"], self.draw_answer(item["photo"], answer))
        self.format.write_prediction(out / "labels", label_name(item["name"]), answer)
        counts = np.bincount(answer.ravel(), minlength=len(self.class_names))
        return {
            "file": item["file"],
            "pixels": {self.class_names[i]: round(float(counts[i] / answer.size), 4) for i in np.flatnonzero(counts)},
        }

    def prediction_paths(self, names: list[str]) -> list[str]:
        return [
            *(f"overlay/{name}" for name in names),
            *(f"labels/{file.as_posix()}" for name in names for file in self.format.prediction_files(label_name(name))),
            self.prediction_file,
        ]

    def score(self, merged: dict) -> dict:
        total = self.format.counts(self.class_names)
        for key in sorted(merged):
            total.merge(merged[key])
        return {**self.format.metrics(total), "num_images": len(merged)}

    def figures(self, metrics: dict) -> dict:
        return self.format.figures(metrics)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        save_dir = self.evaluation_options.get("save_predictions")
        if save_dir and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            print(f"wrote {self.evaluated_images} {self.format.saved_what(Path(save_dir))}")

    def metrics_table(self) -> str:
        """The data format's table (Cityscapes: the official script's class and category tables)."""
        return self.format.metrics_table(self.metrics)

    # ---- the report: per-class figures, the confusion matrix, the worst images ----

    def report_sections(self, data: BaseDataModule, folder: Path, worst: int) -> list[Section]:
        total, per_image = self.format.counts(self.class_names), {}
        for key in sorted(self.results):
            total.merge(self.results[key])
            per_image[key] = self.format.figures(self.format.metrics(self.results[key]))["val/mIoU"]
        figures = self.format.class_figures(self.metrics)
        columns = list(next(iter(figures.values()), {}))
        table = Table(["class", *columns], [[name, *values.values()] for name, values in figures.items()])
        names = list(figures)
        bar_chart(folder / "class_iou.png", names, [figures[n]["IoU"] for n in names], "IoU per class", "IoU")
        counts, classes = total.class_confusion()
        rows = counts.sum(1, keepdims=True)
        shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        confusion_matrix(folder / "confusion_matrix.png", shares, classes, "Pixels of each class (rows) predicted as")
        write_text_atomically(
            folder / "confusion_matrix.json", json.dumps({"classes": classes, "counts": counts.tolist()}, indent=1)
        )
        return [
            Section(
                "Per-class figures",
                [table, Picture("class_iou.png", "IoU per class")],
                "accuracy: the share of a class's pixels predicted as that class (the confusion matrix's diagonal "
                "over its rows).",
            ),
            Section(
                "Confusion matrix",
                [Picture("confusion_matrix.png", "normalised over each ground-truth class (row)")],
                "Counts in confusion_matrix.json (rows: ground truth, columns: prediction).",
            ),
            self._worst_images(data.val_set, per_image, folder, worst),
        ]

    def _worst_images(self, val_set, per_image: dict, folder: Path, worst: int) -> Section:
        """The images of the lowest mIoU, prediction beside ground truth."""
        paths = list(getattr(val_set, "dataset", val_set).image_paths)  # a Mapped set (Cityscapes) holds the reader
        chosen = sorted(per_image, key=lambda k: (np.nan_to_num(per_image[k], nan=np.inf), k))[:worst]
        mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
        rows = []
        for rank, key in enumerate(chosen, 1):
            item = val_set[paths.index(key)]
            prediction = self._predict([item["image"]], self.evaluation_options)[0]
            # the photo as the network saw it (the evaluation transform only normalises)
            photo = (np.asarray(item["image"], np.float64) * std + mean).clip(0, 1) * 255
            photo = np.ascontiguousarray(photo.round().astype(np.uint8).transpose(1, 2, 0))
            pictures = []
            for kind, answer in (("prediction", prediction), ("ground truth", np.asarray(item["mask"]))):
                file = f"worst/{rank:03d}_{kind.replace(' ', '_')}.png"
                write_picture(folder / file, self.draw_answer(photo, answer))
                pictures.append(Picture(file, kind))
            rows.append((f"{rank}. {Path(key).name}: mIoU {per_image[key]:.3f}", pictures))
        return Section(
            f"The {len(chosen)} worst images",
            [Gallery(rows)],
            "Ranked by the image's own mIoU (the data format's, over the classes in its ground truth or prediction); "
            "prediction beside ground truth (black: pixels of no class).",
        )
