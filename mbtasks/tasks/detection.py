"""Detection: data in a detection format (COCO json, YOLO txt), SSD/SSDLite models, COCO mAP every validation epoch;
boxes drawn on photos."""

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import Config
from ..datasets.image_transforms import displayable
from ..datasets.transforms import collate_training, detection_transforms, images_to_float
from ..drawing import class_colours, draw_boxes, write_picture
from ..errors import MbtasksError
from ..evaluation.coco import (
    CocoEvaluation,
    coco_evaluation,
    coco_metrics,
    detections_to_coco_results,
    format_coco_table,
    load_coco_json,
)
from ..evaluation.image_detections import match_image
from ..evaluation.report import Gallery, Picture, Section, Table
from ..evaluation.report_charts import bar_chart, curves
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

    def sample_for_drawing(self, item: tuple, zoom: int = 1) -> tuple[np.ndarray, dict]:
        """The image (training's HWC uint8, evaluation's [0, 1] floats) and its boxes and labels, no scores."""
        image, target = item
        picture = displayable(image, normalised=False, zoom=zoom)
        return picture, {"boxes": np.asarray(target["boxes"]) * zoom, "labels": np.asarray(target["labels"])}

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
    # score_threshold: what is drawn; keep_threshold: what detections.json keeps (low, as torchvision's
    # box_score_thresh: a user choosing a threshold later, or computing a precision-recall curve, needs them)
    prediction_defaults = {"score_threshold": 0.3, "keep_threshold": 0.05}
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

    # ---- the report: per-class AP, COCO's precision-recall curves, the worst images ----

    def report_sections(self, data: BaseDataModule, folder: Path, worst: int) -> list[Section]:
        val_set = data.val_set
        image_ids = sorted(self.results)
        known = set(val_set.coco.cats)
        results = [d for i in image_ids for d in self.results[i] if d["category_id"] in known]
        evaluation = coco_evaluation(
            val_set.ground_truth, results, image_ids=image_ids, backend=self.evaluation_options.get("coco_backend")
        )
        return [*coco_report_sections(evaluation, val_set.coco, image_ids, results, folder)] + [
            self._worst_images(val_set, image_ids, folder, worst)
        ]

    def _worst_images(self, val_set, image_ids: list[int], folder: Path, worst: int) -> Section:
        """The images of the lowest F1 at IoU 0.5 (detections scoring at least `score_threshold`), prediction beside
        ground truth."""
        threshold = self.prediction_options["score_threshold"]
        label_of = {category: label for label, category in enumerate(self.category_ids) if label}
        answers, matches = {}, {}
        for image_id in image_ids:
            detections = self.results[image_id]
            boxes = np.array([d["bbox"] for d in detections], np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # COCO's xywh -> xyxy
            answer = {
                "boxes": boxes,
                "scores": np.array([d["score"] for d in detections], np.float64),
                "labels": np.array([label_of.get(d["category_id"], 0) for d in detections], np.int64),
            }
            truth_boxes, truth_labels, crowd = val_set.boxes_of(image_id)
            kept = answer["scores"] >= threshold
            answers[image_id] = answer
            matches[image_id] = match_image(
                boxes[kept], answer["scores"][kept], answer["labels"][kept], truth_boxes, truth_labels, crowd
            )
        chosen = sorted(image_ids, key=lambda i: (matches[i].f1, -(matches[i].false + matches[i].missed), i))[:worst]
        rows = []
        for rank, image_id in enumerate(chosen, 1):
            photo = val_set.load_image(image_id)
            truth_boxes, truth_labels, crowd = val_set.boxes_of(image_id)
            truth = {"boxes": truth_boxes[crowd == 0], "labels": truth_labels[crowd == 0]}
            pictures = []
            for kind, answer in (("prediction", answers[image_id]), ("ground truth", truth)):
                file = f"worst/{rank:03d}_{kind.replace(' ', '_')}.png"
                write_picture(folder / file, self.draw_answer(photo, answer))
                pictures.append(Picture(file, kind))
            m = matches[image_id]
            name = val_set.coco.imgs[image_id]["file_name"]
            rows.append(
                (f"{rank}. {name}: F1 {m.f1:.3f} ({m.found} found, {m.false} false, {m.missed} missed)", pictures)
            )
        return Section(
            f"The {len(chosen)} worst images",
            [Gallery(rows)],
            f"Ranked by F1 at IoU 0.5 of the detections scoring at least {threshold:g}, matched to the boxes of their "
            "class as COCOeval matches them (crowd regions neither found nor missed); prediction beside ground truth.",
        )

    @classmethod
    def report_files(cls, options: dict, folder: Path, worst: int) -> list[Section]:
        """Per-class AP and the precision-recall curves of a results file (--detections) against --annotations."""
        evaluation = coco_evaluation(options["annotations"], options["detections"], backend=options.get("coco_backend"))
        coco = load_coco_json(options["annotations"])
        results = json.loads(Path(options["detections"]).read_text())
        return coco_report_sections(evaluation, coco, sorted(coco.imgs), results, folder)

    # ---- predict ----

    def predict_inputs(self, inputs: list[torch.Tensor]) -> list:
        outputs = self.model([image.to(self.device) for image in inputs])
        return [{k: v.cpu() for k, v in output.items()} for output in outputs]

    def prepare_predictions(self, files: list[Path]) -> None:
        self.drawn: dict[str, int] = {}  # per photo, the detections drawn on it: the summary's

    def draw_answer(self, photo: np.ndarray, answer: dict) -> np.ndarray:
        """Boxes in their class's colour, captioned "name 0.87" (the name alone for ground truth, which has no
        scores); detections scoring under `score_threshold` are not drawn, the best are drawn last (on top)."""
        boxes = np.asarray(answer["boxes"], np.float64).reshape(-1, 4)
        labels = np.asarray(answer["labels"]).astype(np.int64).reshape(-1)
        scores = answer.get("scores")
        if scores is None:
            captions = [self.class_names[label] for label in labels]
        else:
            scores = np.asarray(scores, np.float64).reshape(-1)
            order = [
                i for i in np.argsort(scores, kind="stable") if scores[i] >= self.prediction_options["score_threshold"]
            ]
            boxes, labels = boxes[order], labels[order]
            captions = [f"{self.class_names[label]} {scores[i]:.2f}" for label, i in zip(labels, order)]
        return draw_boxes(photo, boxes, captions, class_colours(len(self.class_names))[labels])

    def write_prediction(self, out: Path, item: dict, answer: dict) -> dict:
        """The photo with its boxes scoring at least `score_threshold` drawn (`draw_answer`); the entry keeps every
        detection scoring at least `keep_threshold` (at most `score_threshold`: all that are drawn)."""
        options = self.prediction_options
        write_picture(out / item["name"], self.draw_answer(item["photo"], answer))
        self.drawn[item["file"]] = int((answer["scores"] >= options["score_threshold"]).sum())
        keep = answer["scores"] >= min(options["keep_threshold"], options["score_threshold"])
        boxes, scores, labels = answer["boxes"][keep], answer["scores"][keep].tolist(), answer["labels"][keep].tolist()
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

    def write_predictions(self, out: Path, entries: list[dict]) -> list[str]:
        """detections.json, and the summary: detections drawn, photos with none drawn (the first few named)."""
        options = self.prediction_options
        kept = sum(len(entry["detections"]) for entry in entries)
        lines = super().write_predictions(out, entries)
        lines[-1] += (
            f" ({kept} detections scoring {min(options['keep_threshold'], options['score_threshold']):g} or more)"
        )
        empty = [file for file, drawn in self.drawn.items() if drawn == 0]
        named = f": {', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}" if empty else ""
        drawn, threshold = sum(self.drawn.values()), options["score_threshold"]
        lines.append(
            f"{len(self.drawn)} images, {drawn} detections drawn (score {threshold:g} or more), {len(empty)} images "
            f"with none above the threshold{named}"
        )
        return lines

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


def coco_report_sections(
    evaluation: CocoEvaluation, coco, image_ids: list[int], results: list[dict], folder: Path
) -> list[Section]:
    """Per-class AP (table and bars) of the categories with boxes or detections, and COCO's precision-recall curves per
    IoU threshold and per object size, their charts written into `folder`."""
    scored = set(image_ids)
    boxes = Counter(
        a["category_id"] for a in coco.dataset["annotations"] if a["image_id"] in scored and not a.get("iscrowd")
    )
    detections = Counter(r["category_id"] for r in results)
    by_column = {
        "AP": evaluation.class_ap(),
        "AP50": evaluation.class_ap(0.5),
        "AP75": evaluation.class_ap(0.75),
        "APs": evaluation.class_ap(area="small"),
        "APm": evaluation.class_ap(area="medium"),
        "APl": evaluation.class_ap(area="large"),
    }
    shown = [c for c in evaluation.category_ids if boxes[c] or detections[c]]
    names = [coco.cats[c]["name"] for c in shown]
    table = Table(
        ["class", "category id", "boxes", "detections", *by_column],
        [
            [name, c, boxes[c], detections[c], *(column[c] for column in by_column.values())]
            for name, c in zip(names, shown)
        ],
    )
    bar_chart(folder / "class_ap.png", names, [by_column["AP"][c] for c in shown], "AP per class", "AP @[.50:.95]")
    per_iou = {
        f"IoU {iou:.2f} (AP {np.nanmean(curve):.3f})": (evaluation.recall_thresholds, curve)
        for iou in evaluation.iou_thresholds
        if not np.isnan(curve := evaluation.curve(float(iou))).all()
    }
    per_area = {
        f"{area} (AP {np.nanmean(curve):.3f})": (evaluation.recall_thresholds, curve)
        for area in evaluation.area_names
        if not np.isnan(curve := evaluation.curve(area=area)).all()
    }
    curves(folder / "pr_iou.png", per_iou, "Precision-recall per IoU threshold (all sizes)", "recall", "precision")
    curves(folder / "pr_area.png", per_area, "Precision-recall per object size (IoU .50:.95)", "recall", "precision")
    left_out = len(evaluation.category_ids) - len(shown)
    return [
        Section(
            "Per-class AP",
            [table, Picture("class_ap.png", "AP @[IoU .50:.95, all sizes, 100 detections] per class")],
            "COCOeval's precision per category, averaged as its summary averages AP (n/a: no boxes of that class "
            "or size)" + (f"; {left_out} categories without boxes or detections are left out." if left_out else "."),
        ),
        Section(
            "Precision-recall curves",
            [
                Picture("pr_iou.png", "per IoU threshold, averaged over the classes"),
                Picture("pr_area.png", "per object size, averaged over the classes and IoU thresholds"),
            ],
            "COCO's interpolated precision at 101 recall points, 100 detections per image.",
        ),
    ]
