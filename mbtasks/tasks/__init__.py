"""The task registry: what `mbtasks train/evaluate/export/ablate --task NAME` runs.

Adding a task is one entry here and its module `tasks/<task>.py` (a BaseDataModule and a BaseTask), with its data
reader under datasets/ and its evaluator under evaluation/.
"""
from dataclasses import dataclass

from ..registry import Registry
from .attributes import AttributesDataModule, AttributesTask
from .classification import ClassificationDataModule, ClassificationTask
from .detection import DetectionDataModule, DetectionTask
from .embeddings import EmbeddingsDataModule, EmbeddingsTask
from .segmentation import SegmentationDataModule, SegmentationTask


@dataclass(frozen=True)
class TaskSpec:
    """One task: its data module and LightningModule, and the facts the commands need about it."""

    data_module: type  # built from a Config: data root or embedded set (its `write_synthetic`), transforms, loaders
    module: type  # built from (config dict, class names, category ids): network, loss, metrics, optimiser
    monitor: str  # the logged validation metric that picks best.ckpt (higher is better)
    default_model: str  # model.name when the config names none
    demo_config: str  # its recipe on the embedded data set, in configs/demo/
    headline_metrics: tuple[str, ...]  # keys of `evaluate --json`; the first one present is the task's figure
    profile_classes: int  # the class count of its usual data set, for profile-only ablations (no data read)
    graph_outputs: tuple[str, ...]  # output names of its exported ONNX graph


TASKS: Registry[TaskSpec] = Registry("task")
TASKS.register("det", TaskSpec(
    DetectionDataModule, DetectionTask, "val/mAP", "ssdlite320_mobilenet_v3_large", "det_shapes.yaml",
    ("AP",), 91, ("boxes", "scores", "labels")))  # COCO's 91 category ids, as torchvision
TASKS.register("seg", TaskSpec(
    SegmentationDataModule, SegmentationTask, "val/mIoU", "lraspp_mobilenet_v3_large", "seg_cityscapes_synth.yaml",
    ("mean_class_iou", "mean_iou"), 19, ("logits",)))  # Cityscapes first, then VOC
TASKS.register("attr", TaskSpec(
    AttributesDataModule, AttributesTask, "val/mean_ap", "mobilenet_v1", "attr_faces.yaml",
    ("mean_average_precision",), 40, ("logits",)))  # CelebA's 40 attributes
TASKS.register("embed", TaskSpec(
    EmbeddingsDataModule, EmbeddingsTask, "val/accuracy", "mobilenet_v1", "embed_faces.yaml",
    ("accuracy_mean",), 0, ("embeddings",)))
TASKS.register("cls", TaskSpec(
    ClassificationDataModule, ClassificationTask, "val/top1", "mobilenet_v3_large", "cls_shapes.yaml",
    ("top1",), 1000, ("logits",)))  # ImageNet
