"""Detection with Lightning: COCO-format data, SSD/SSDLite models, COCO mAP every validation epoch."""
import copy
import re
from operator import itemgetter
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config, config_from_dict
from ..datasets.coco import CocoDetection
from ..datasets.mapped import Mapped
from ..datasets.synthetic.shapes_coco import write_shapes_coco
from ..datasets.transforms import detection_transforms
from ..evaluation.coco import coco_metrics, detections_to_coco_results, format_coco_table
from ..models import MODEL_BACKBONES, build_configured_model
from .training import configure_optimizer, gather_by_key


def detection_input_size(config: Config) -> tuple[int, int]:
    """data.size, else the model's `size` option, else the size in its name (ssdlite320_... -> 320)."""
    size = config.data.size or config.model.options.get("size")
    if size is None:
        match = re.match(r"[a-z]+(\d+)_", config.model.name)
        size = int(match.group(1)) if match else 320
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def collate(batch: list) -> tuple:
    """Detection batches stay lists: images may differ in size until the model resizes them."""
    return tuple(zip(*batch))


class DetectionDataModule(pl.LightningDataModule):
    """COCO layout under data.root (`annotations/instances_{split}.json`, `{split}/*.jpg`), or the embedded set."""

    write_synthetic = staticmethod(write_shapes_coco)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        data = config.data
        self.root = Path(data.root if data.root is not None else data.synth_dir)
        self.train_split = data.train_split or "train2017"
        self.val_split = data.val_split or "val2017"
        self.size = detection_input_size(config)
        self.train_set = self.val_set = None

    @staticmethod
    def input_size(config: Config) -> tuple[int, int]:
        """The network's input size (height, width) this config trains at."""
        return detection_input_size(config)

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def val_annotation_file(self) -> Path:
        return self.annotation_file(self.val_split)

    def prepare_data(self) -> None:
        if self.config.data.root is None and not self.annotation_file("val2017").is_file():
            self.write_synthetic(self.root, **self.config.data.synth)

    def setup(self, stage: str | None = None) -> None:
        preset = self.config.data.augmentation
        preset = "ssdlite" if preset == "default" else preset
        seed = self.config.train.seed
        if self.val_set is None:
            self.val_set = CocoDetection(self.root / self.val_split, self.val_annotation_file,
                                         detection_transforms(preset, self.size, train=False), train=False)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CocoDetection(self.root / self.train_split, self.annotation_file(self.train_split),
                                           detection_transforms(preset, self.size, train=True, seed=seed),
                                           train=True)

    def graph_inputs(self, split: str) -> Dataset:
        """The images of `split` ("train", after setup("fit"), or "val") as the exported graph takes them: CHW float
        in [0, 1], pre-processed as at evaluation (training images without augmentation)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        if split == "val":
            return Mapped(self.val_set, itemgetter(0))
        images = copy.copy(self.train_set)  # shares the annotations already read; only the transforms differ
        images.transforms = self.val_set.transforms
        return Mapped(images, itemgetter(0))

    @property
    def class_names(self) -> list[str]:
        return self.val_set.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.val_set.category_ids

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                          drop_last=shuffle and len(dataset) > batch_size, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.config.data.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.config.data.val_batch_size, False)


class DetectionTask(pl.LightningModule):
    """An SSD / SSDLite model, its MultiBox loss, and COCO mAP over the whole validation set each epoch."""

    def __init__(self, config: dict, class_names: list[str], category_ids: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.config = config_from_dict(config)
        self.class_names, self.category_ids = list(class_names), list(category_ids)
        model = self.config.model
        self.model_options = {"num_classes": len(class_names), "size": list(detection_input_size(self.config)),
                              **model.options}
        self.model = build_configured_model(model.name, self.model_options, model.weights, model.backbone_weights)
        self.metrics: dict[str, float] = {}
        self.evaluated_images = 0
        self._detections: dict[int, list] = {}

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.model(images)

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._detections = {}

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        images, targets = batch
        for output, target in zip(self.model(list(images)), targets):
            output = {k: v.cpu() for k, v in output.items()}
            self._detections[target["image_id"]] = detections_to_coco_results([output], [target["image_id"]],
                                                                              self.category_ids)

    def on_validation_epoch_end(self) -> None:
        merged = gather_by_key(self._detections, self)
        results = [d for image_id in sorted(merged) for d in merged[image_id]]
        self.evaluated_images = len(merged)
        self.metrics = coco_metrics(self.trainer.datamodule.val_annotation_file, results, image_ids=sorted(merged))
        self.log("val/mAP", self.metrics["AP"], prog_bar=True)
        self.log("val/mAP50", self.metrics["AP50"])

    def metrics_table(self) -> str:
        """The 12 COCO figures as pycocotools prints them."""
        return format_coco_table(self.metrics)

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self, self.config.train)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mbtasks"] = {
            "task": "det", "model": self.config.model.name, "backbone": MODEL_BACKBONES[self.config.model.name],
            "options": self.model_options, "class_names": self.class_names, "category_ids": self.category_ids,
            "config": self.config.to_dict()}
