"""Detection: data in a detection format (COCO json, YOLO txt), SSD/SSDLite models, COCO mAP every validation epoch;
boxes drawn on photos."""

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.utils import draw_bounding_boxes

from ..config import Config
from ..datasets.transforms import collate_training, detection_transforms, images_to_float
from ..drawing import write_png
from ..errors import MbtasksError
from ..evaluation.coco import coco_metrics, detections_to_coco_results, format_coco_table
from ..io.executorch_runtime import ExecutorchDetector
from ..io.onnx_runtime import OnnxDetector
from ..models import MODELS, check_num_classes
from ..models.detection_graph import RCNNGraph, detection_graph
from ..models.fixed_size_selection import FixedSizeDetectionGraph
from ..models.pretrained import load_weights
from ..sizes import height_width
from .base import BaseDataModule, BaseTask
from .registry import TASKS

# The sides of the images an ExecuTorch program of a detector takes (it resizes them itself).
MIN_SIDE, MAX_SIDE = 16, 4096


def detection_input_size(config: Config) -> tuple[int, int]:
    """data.size, else the model's `size` option, else its registered default size."""
    size = config.data.size or config.model.options.get("size") or MODELS.get(config.model.name).size
    return height_width(size)


def augmentation_preset(config: Config) -> str:
    """data.augmentation, with "default" meaning torchvision's SSDLite recipe."""
    return "ssdlite" if config.data.augmentation == "default" else config.data.augmentation


def detector_classes(config: Config) -> dict:
    """The detector's class count (model.options.num_classes, else its whole-model weights'; None: the data's) and, for
    weights that label by category id (torchvision's COCO detectors), their class names by id."""
    num_classes, model = config.model.options.get("num_classes"), config.model
    if not model.weights:
        return {"num_classes": num_classes}
    weights = load_weights(model.weights)
    by_id = weights.category_ids == list(range(len(weights.class_names)))
    return {
        "num_classes": num_classes or weights.options.get("num_classes"),
        "names_by_id": list(weights.class_names) if by_id else [],
    }


def collate(batch: list) -> tuple:
    """Validation batches stay lists: images differ in size until the model resizes them."""
    return tuple(zip(*batch))


class DetectionDataModule(BaseDataModule):
    """Data in a detection format under data.root (COCO: `annotations/instances_{split}.json`, `{split}/*.jpg`; YOLO:
    `images/`, `labels/`), or the embedded shapes; whichever it is, a CocoDetection, scored by COCOeval."""

    format_kind, default_format = "detection", "coco"
    train_collate = staticmethod(collate_training)
    val_collate = staticmethod(collate)

    def __init__(self, config: Config | dict):
        super().__init__(config)
        self.size = detection_input_size(self.config)

    @staticmethod
    def input_size(config: Config) -> tuple[int, int]:
        return detection_input_size(config)

    @classmethod
    def predict_transform(cls, config: Config) -> Callable:
        return detection_transforms(augmentation_preset(config), detection_input_size(config), train=False)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Training images arrive as one NHWC uint8 tensor and become NCHW floats here, on the device."""
        return images_to_float(batch, self.model_dtype())

    def unaugmented_train_set(self) -> Dataset:
        images = copy.copy(self.train_set)  # shares the annotations already read; only the transforms differ
        images.transforms = self.val_set.transforms
        return images

    def setup(self, stage: str | None = None) -> None:
        preset = augmentation_preset(self.config)
        labels = detector_classes(self.config)
        if self.val_set is None:
            self.val_set = self.format.dataset(
                self.val_split, detection_transforms(preset, self.size, train=False), train=False, **labels
            )
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = detection_transforms(preset, self.size, train=True, seed=self.config.train.seed)
            self.train_set = self.format.dataset(self.train_split, self.train_transform, train=True, **labels)
            if self.train_set.category_ids != self.val_set.category_ids:
                raise MbtasksError(
                    f"has other categories than {self.val_set.annotation_file.name}", self.train_set.annotation_file
                )

    @property
    def class_names(self) -> list[str]:
        return self.val_set.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.val_set.category_ids


@TASKS.register("det")
class DetectionTask(BaseTask):
    """An SSD / SSDLite model, its MultiBox loss, and COCO mAP over the whole validation set each epoch."""

    data_module = DetectionDataModule
    monitor, default_model, demo_recipe = "val/mAP", "ssdlite320_mobilenet_v3_large", "det_shapes"
    headline_metrics, profile_classes = ("AP",), 91  # COCO's 91 category ids, as torchvision
    graph_outputs, ablation_head = ("boxes", "scores", "labels"), "ssdlite320"
    progress_bar = ("val/mAP",)
    prediction_defaults = {"score_threshold": 0.3}
    prediction_file = "detections.json"

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        check_num_classes(options, len(self.class_names), "labels")
        return name, {"num_classes": len(self.class_names), "size": list(detection_input_size(self.config)), **options}

    def on_network_built(self) -> None:
        # The class count goes into the recipe, so a checkpoint's data module maps labels as training did (by
        # category id for a model of COCO's 91 ids) without the weights file.
        self.config.model.options["num_classes"] = len(self.class_names)

    def warmup_steps(self, steps_per_epoch: float) -> int:
        """torchvision's detection reference: min(1000, one epoch's steps) (none when train.warmup_epochs is 0)."""
        return min(1000, int(steps_per_epoch)) if self.config.train.warmup_epochs > 0 else 0

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        images, targets = batch
        for output, target in zip(self.model(list(images)), targets):
            output = {k: v.cpu() for k, v in output.items()}
            self.results[target["image_id"]] = detections_to_coco_results(
                [output], [target["image_id"]], self.category_ids
            )

    def score(self, merged: dict) -> dict:
        val_set = self.trainer.datamodule.val_set
        # A model labelling by category id answers in ids the data set lacks too ("N/A" among torchvision's 91):
        # COCOeval scores the ground truth's categories only, so the others are left out, as it would.
        known = set(val_set.coco.cats)
        results = [d for image_id in sorted(merged) for d in merged[image_id] if d["category_id"] in known]
        return coco_metrics(
            val_set.ground_truth, results, image_ids=sorted(merged), backend=self.evaluation_options.get("coco_backend")
        )

    def figures(self, metrics: dict) -> dict:
        return {"val/mAP": metrics["AP"], "val/mAP50": metrics["AP50"]}

    def metrics_table(self) -> str:
        """The 12 COCO figures as pycocotools prints them."""
        return format_coco_table(self.metrics)

    # ---- predict ----

    def predict_inputs(self, inputs: list[torch.Tensor]) -> list:
        outputs = self.model([image.to(self.device) for image in inputs])
        return [{k: v.cpu() for k, v in output.items()} for output in outputs]

    def write_prediction(self, out: Path, item: dict, answer: dict) -> dict:
        """The photo with its boxes scoring at least `score_threshold`, class names and scores drawn."""
        keep = answer["scores"] >= self.prediction_options["score_threshold"]
        boxes, scores, labels = answer["boxes"][keep], answer["scores"][keep].tolist(), answer["labels"][keep].tolist()
        captions = [f"{self.class_names[label]} {score:.2f}" for label, score in zip(labels, scores)]
        photo = torch.from_numpy(item["photo"]).permute(2, 0, 1)
        if len(boxes):  # torchvision warns when asked to draw no boxes
            photo = draw_bounding_boxes(photo, boxes, captions, colors="red", width=2)
        write_png(out / item["name"], photo.permute(1, 2, 0).numpy())
        ids = self.category_ids or list(range(len(self.class_names)))
        return {
            "file": item["file"],
            "detections": [
                {
                    "box_xyxy": [round(v, 2) for v in box],
                    "score": round(score, 4),
                    "label": self.class_names[label],
                    "category_id": ids[label],
                }
                for box, score, label in zip(boxes.tolist(), scores, labels)
            ],
        }

    # ---- export: the whole detector in one graph, one [0, 1] image of any size -> boxes in its pixels ----

    @classmethod
    def graph(cls, model: nn.Module) -> nn.Module:
        return detection_graph(model)

    @classmethod
    def graph_settings(cls, graph: nn.Module) -> dict:
        selection = {"selection": graph.selection} if hasattr(graph, "selection") else {}
        return {"postprocess": graph.postprocess, **selection}

    @classmethod
    def graph_dynamic_axes(cls, size: dict[int, str]) -> dict:
        """One image of any size in, any number of detections out."""
        return {"images": size, **{name: {0: "detections"} for name in cls.graph_outputs}}

    @classmethod
    def graph_pixel_sides(cls, inputs: list[torch.Tensor]) -> dict[str, int]:
        return {"boxes": max(max(x.shape[-2:]) for x in inputs)}

    @classmethod
    def graph_differences(cls, expected: list[np.ndarray], got: list[np.ndarray]) -> list[float]:
        """Boxes, scores, labels of two lists of detections. Scores are compared sorted. Each detection is paired
        with the one of the same label whose box is nearest in the other list; boxes are compared over the pairs
        within a pixel, and `labels` is the share of detections left without such a twin and without a score tie
        (within 1e-6) to explain it: which of two tied boxes NMS keeps, or which comes last in the top N, is a matter
        of the last bit (flat image regions give many anchors the same score). A different count is an infinite
        difference."""
        (want_boxes, want_scores, want_labels), (boxes, scores, labels) = expected, got
        if len(boxes) != len(want_boxes):
            return [float("inf")] * 3
        if len(boxes) == 0:
            return [0.0] * 3
        distance = np.abs(boxes[:, None] - want_boxes[None]).max(-1)
        distance[labels[:, None] != want_labels[None]] = np.inf
        nearest = distance.min(1)
        paired = nearest <= 1.0
        # An unpaired detection's score met in the other list, or twice in its own, is a tie between two detections.
        gaps = np.abs(scores[:, None] - scores[None])
        np.fill_diagonal(gaps, np.inf)
        tied = (gaps.min(1) <= 1e-6) | (np.abs(scores[:, None] - want_scores[None]).min(1) <= 1e-6)
        unexplained = (~paired & ~tied).mean()  # a detection without a twin, and without a tie to explain it
        return [
            float(nearest[paired].max()) if paired.any() else float("inf"),
            float(np.abs(np.sort(scores) - np.sort(want_scores)).max()),
            float(unexplained),
        ]

    @classmethod
    def runtime_model(cls, session, settings: dict, path: str | Path, runtime: str = "onnxruntime") -> nn.Module:
        return (ExecutorchDetector if runtime == "executorch" else OnnxDetector)(session, settings, path)

    @classmethod
    def graph_preprocessing(cls) -> dict:
        return {
            "layout": "NCHW, batch 1",
            "values": "RGB / 255 in [0, 1]; any size: resized and normalised inside",
            "max_side": MAX_SIDE,
        }

    @classmethod
    def executorch_graph(cls, model: nn.Module) -> nn.Module:
        """The detector end to end with NMS in fixed-size operators (ExecuTorch runs no NonMaxSuppression)."""
        if isinstance(detection_graph(model), RCNNGraph):
            raise MbtasksError("ExecuTorch has no kernels for a Faster R-CNN's RoIAlign and NMS: export it to ONNX")
        return FixedSizeDetectionGraph(model)

    @classmethod
    def executorch_dynamic_shapes(cls) -> dict:
        """One image of any height and width."""
        return {
            2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE),
        }

    @classmethod
    def executorch_quantised_modules(cls) -> tuple[str, ...]:
        """The network; resizing, normalisation, box decoding and selection stay float."""
        return ("backbone", "head")

    @classmethod
    def size_overrides(cls, size: int | list[int]) -> list[str]:
        """A detector's size option outranks data.size."""
        return [f"data.size={size}", f"model.options.size={size}"]

    @classmethod
    def score_files(cls, options: dict) -> tuple[dict, str, int | None] | None:
        """A COCO results file (--detections) against its ground truth (--annotations)."""
        if not (options.get("annotations") or options.get("detections")):
            return None
        if not (options.get("annotations") and options.get("detections")):
            raise MbtasksError("scoring a results file needs both --annotations and --detections")
        metrics = coco_metrics(options["annotations"], options["detections"], backend=options.get("coco_backend"))
        return metrics, format_coco_table(metrics), None
