"""Segmentation: Cityscapes or VOC data, LR-ASPP / DeepLabv3 models, the official metrics each epoch.

Validation runs on whole images at their own resolution. On Cityscapes it scores label ids with the official
evaluation (IoU and iIoU, per class and per category); on VOC it reports the confusion-matrix mIoU. Each image's
counts are kept under its path and merged over processes once per image, so DDP gives the figures of one process.
"""
import copy
import os
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..config import Config
from ..datasets.cityscapes import TRAIN_ID_COLORS, CityscapesSegmentation, train_ids_to_label_ids
from ..datasets.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from ..datasets.mapped import Mapped
from ..datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from ..datasets.segmentation_transforms import (normalise_batch, segmentation_eval_transforms,
                                                segmentation_train_transforms)
from ..datasets.voc import CLASS_NAMES as VOC_CLASSES
from ..datasets.voc import VOCSegmentation, voc_palette
from ..drawing import blend, write_png
from ..errors import MbtasksError
from ..evaluation.segmentation import (CityscapesEvaluator, ConfusionMatrix, evaluate_cityscapes_folders,
                                       format_cityscapes_table)
from ..io.images import read_label_png
from ..models import check_num_classes
from .base import BaseDataModule, BaseTask
from .registry import TASKS

# data.augmentation -> the random-scale range of the training crops (mmseg's recipe is 0.5..2.0)
AUGMENTATIONS = {"default": (0.5, 2.0), "light": (0.75, 1.5), "fixed_scale": (1.0, 1.0)}
# training crop (height, width) when data.size is not set: mmseg's for each data set
DEFAULT_CROPS = {"cityscapes": (512, 1024), "voc": (512, 512)}
FORMATS = {"cityscapes": CityscapesSegmentation, "voc": VOCSegmentation}
CLASS_NAMES = {"cityscapes": CITYSCAPES_CLASSES, "voc": VOC_CLASSES}
# Validation stacks same-sized images up to this many pixels per forward pass (two 1024x2048 images), so a large
# data.val_batch_size cannot run full-resolution inference out of memory.
MAX_PIXELS_PER_FORWARD = 2 * 1024 * 2048


def dataset_format(root: str | os.PathLike) -> str:
    """'cityscapes' (leftImg8bit/ here) or 'voc' (ImageSets/Segmentation here, in VOC2012/ or VOCdevkit/VOC2012/)."""
    root = Path(root)
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if any((base / "ImageSets" / "Segmentation").is_dir()
           for base in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")):
        return "voc"
    raise MbtasksError("neither a Cityscapes root (leftImg8bit/, gtFine/) nor a VOC 2012 root "
                       "(ImageSets/Segmentation/, JPEGImages/, SegmentationClass/)", root)


def with_official_targets(item: dict) -> dict:
    """A Cityscapes item plus the ground truth the official evaluation reads: label ids and instance ids (HxW)."""
    label_path = item["label_path"]
    item["label_ids"] = read_label_png(label_path)
    item["instance_ids"] = read_label_png(label_path[: -len("labelIds.png")] + "instanceIds.png")
    return item


def keep_list(batch: list) -> list:
    """Validation batches stay lists of items: VOC images differ in size, and inference chunks them itself."""
    return batch


class SegmentationDataModule(BaseDataModule):
    """A Cityscapes root (leftImg8bit/, gtFine/) or a VOC 2012 root under data.root, or the embedded street scenes."""

    write_synthetic = staticmethod(write_streets_cityscapes)
    val_collate = staticmethod(keep_list)
    graph_input = itemgetter("image")

    def __init__(self, config: Config):
        super().__init__(config)
        data = config.data
        self.format = "cityscapes" if data.root is None else dataset_format(self.root)
        self.train_split = data.train_split or "train"
        self.val_split = data.val_split or "val"
        size = data.size or DEFAULT_CROPS[self.format]
        self.crop_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if data.augmentation not in AUGMENTATIONS:
            raise MbtasksError(f"data.augmentation must be one of {', '.join(AUGMENTATIONS)} for seg, "
                               f"got {data.augmentation!r}")

    def setup(self, stage: str | None = None) -> None:
        dataset = FORMATS[self.format]
        if self.val_set is None:
            self.val_set = dataset(self.root, self.val_split, segmentation_eval_transforms())
            if self.format == "cityscapes":
                self.val_set = Mapped(self.val_set, with_official_targets)
        if stage in (None, "fit") and self.train_set is None:
            scales = AUGMENTATIONS[self.config.data.augmentation]
            self.train_transform = segmentation_train_transforms(
                self.crop_size, scales, ignore_index=dataset.ignore_index, seed=self.config.train.seed)
            self.train_set = dataset(self.root, self.train_split, self.train_transform)

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
        return list(CLASS_NAMES[self.format])



@TASKS.register("seg")
class SegmentationTask(BaseTask):
    """A segmentation model, its cross-entropy (+ aux) loss, and the official metrics over the whole val set."""

    data_module = SegmentationDataModule
    monitor, default_model, demo_recipe = "val/mIoU", "lraspp_mobilenet_v3_large", "seg_cityscapes_synth.yaml"
    headline_metrics, profile_classes = ("mean_class_iou", "mean_iou"), 19  # Cityscapes first, then VOC
    ablation_head = "deeplabv3"
    progress_bar = ("val/mIoU",)
    prediction_defaults = {"scales": None, "flip": False}
    prediction_file = "segmentation.json"

    def __init__(self, config: dict, class_names: list[str], category_ids: list):
        self.format = "cityscapes" if list(class_names) == list(CITYSCAPES_CLASSES) else "voc"
        super().__init__(config, class_names, category_ids)

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        check_num_classes(options, len(self.class_names))
        return name, {**options, "num_classes": len(self.class_names)}

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        loss = self.model.loss(self.model.forward_with_aux(images), masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    @classmethod
    def graph_dynamic_axes(cls, size: dict[int, str]) -> dict:
        """Logits at the input resolution: their height and width follow the input's."""
        axes = super().graph_dynamic_axes(size)
        axes["logits"].update(size)
        return axes

    @classmethod
    def score_files(cls, options: dict) -> tuple[dict, str, int | None] | None:
        """A folder of Cityscapes labelId PNGs (--predictions) against a Cityscapes root (--gt), as the official
        script scores them."""
        if not (options.get("gt") or options.get("predictions")):
            return None
        if not (options.get("gt") and options.get("predictions")):
            raise MbtasksError("scoring saved predictions needs both --gt and --predictions")
        result = evaluate_cityscapes_folders(options["gt"], options["predictions"], split=options.get("split", "val"))
        metrics = {k: v for k, v in result.items() if k != "confusion_matrix"}
        return metrics, format_cityscapes_table(result), result["num_images"]

    # ---- inference ----

    def predict_class_indices(self, images: torch.Tensor, scales: list[float] | None = None,
                              flip: bool = False) -> torch.Tensor:
        """Class index per pixel (N, H, W) at the input resolution; multi-scale (`scales`) and flipped inference."""
        scales = scales or [1.0]
        if scales == [1.0] and not flip:
            return self.model(images).argmax(1)
        size = images.shape[-2:]
        total = None
        for scale in scales:
            scaled = images if scale == 1.0 else F.interpolate(
                images, size=(round(size[0] * scale), round(size[1] * scale)), mode="bilinear", align_corners=False)
            for flipped in ([False, True] if flip else [False]):
                x = scaled.flip(-1) if flipped else scaled
                logits = self.model(x)
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
            if self.format == "cityscapes":
                label_ids = train_ids_to_label_ids(prediction)
                counts = CityscapesEvaluator()
                counts.update(label_ids, item["label_ids"], item["instance_ids"])
            else:
                counts = ConfusionMatrix(len(self.class_names), class_names=self.class_names)
                counts.update(prediction, np.asarray(item["mask"]))
            self.results[item["image_path"]] = counts  # image path -> that image's counts
            if save_dir:
                path = Path(item["image_path"])
                self._save_prediction(Path(save_dir), PurePath(path.parent.name, path.name)
                                      if self.format == "cityscapes" else PurePath(path.stem + ".png"), prediction)

    def _save_prediction(self, out: Path, name: PurePath, prediction: np.ndarray) -> None:
        """Cityscapes: labelIds/<name> (what the official evaluation reads; name <city>/<image name> at evaluation)
        and color/<name>; VOC: <name>, a palette PNG of class indices (the devkit's results format)."""
        if self.format == "cityscapes":
            images = [train_ids_to_label_ids(prediction), TRAIN_ID_COLORS[prediction]]
        else:
            image = Image.fromarray(prediction)
            image.putpalette(voc_palette().ravel().tolist())  # makes it a palette image
            images = [image]
        for file, image in zip(self._label_files(name), images, strict=True):
            write_png(out / file, image)

    def _label_files(self, name: PurePath) -> list[PurePath]:
        """Where `_save_prediction` writes `name`'s files, relative to its folder, in the order it writes them."""
        return [PurePath("labelIds", name), PurePath("color", name)] if self.format == "cityscapes" else [name]

    def earlier_predictions(self, folder: Path) -> list[Path]:
        """Files in `folder` where `evaluate --save-predictions` would write, before it runs: Cityscapes anything under
        labelIds/ and color/, VOC any PNG directly in it."""
        if self.format == "cityscapes":
            return [p for sub in ("labelIds", "color") for p in sorted((folder / sub).rglob("*")) if p.is_file()]
        return sorted(p for p in folder.glob("*.png") if p.is_file())

    # ---- predict ----

    def predict_inputs(self, inputs: list[torch.Tensor]) -> list:
        return self._predict(inputs, self.prediction_options)

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        """overlay/<name>: the class colours blended on the photo; labels/<name>: the label PNG in the data set's
        results format (as `evaluate --save-predictions`); the entry: the share of the pixels of each class."""
        colours = TRAIN_ID_COLORS if self.format == "cityscapes" else voc_palette()
        write_png(out / "overlay" / item["name"], blend(item["photo"], colours[answer].astype(np.uint8)))
        self._save_prediction(out / "labels", PurePath(item["name"]), answer)
        counts = np.bincount(answer.ravel(), minlength=len(self.class_names))
        return {"file": item["file"], "pixels": {self.class_names[i]: round(float(counts[i] / answer.size), 4)
                                                 for i in np.flatnonzero(counts)}}

    def prediction_paths(self, names: list[str]) -> list[str]:
        return [*(f"overlay/{name}" for name in names),
                *(f"labels/{file.as_posix()}" for name in names for file in self._label_files(PurePath(name))),
                self.prediction_file]

    def score(self, merged: dict) -> dict:
        if self.format == "cityscapes":
            total = CityscapesEvaluator()
            for key in sorted(merged):
                total.merge(merged[key])
            return {k: v for k, v in total.result().items() if k != "confusion_matrix"}
        total = ConfusionMatrix(len(self.class_names), class_names=self.class_names)
        for key in sorted(merged):
            total.merge(merged[key])
        return {**total.result(), "num_images": len(merged)}

    def figures(self, metrics: dict) -> dict:
        if self.format == "cityscapes":
            return {"val/mIoU": metrics["mean_class_iou"], "val/iIoU": metrics["mean_class_iiou"],
                    "val/category_IoU": metrics["mean_category_iou"],
                    "val/category_iIoU": metrics["mean_category_iiou"]}
        return {"val/mIoU": metrics["mean_iou"], "val/pixel_accuracy": metrics["pixel_accuracy"]}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        save_dir = self.evaluation_options.get("save_predictions")
        if save_dir and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            where = (f"labelId PNGs to {Path(save_dir) / 'labelIds'} and colour PNGs to {Path(save_dir) / 'color'}"
                     if self.format == "cityscapes" else f"palette PNGs of class indices to {save_dir}")
            print(f"wrote {self.evaluated_images} {where}")

    def metrics_table(self) -> str:
        """Cityscapes: the official script's class and category tables; VOC: IoU per class and the mean."""
        if self.format == "cityscapes":
            return format_cityscapes_table(self.metrics)
        lines = ["class            IoU", "-" * 21]
        lines += [f"{name:<14}: {iou:>5.3f}" for name, iou in self.metrics["iou"].items()]
        lines += ["-" * 21, f"mIoU          : {self.metrics['mean_iou']:5.3f}",
                  f"pixel accuracy: {self.metrics['pixel_accuracy']:5.3f}"]
        return "\n".join(lines)

