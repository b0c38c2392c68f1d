"""Classification: ImageFolder data, ImageNet-style classifiers, top-1 / top-5 every validation; the top five
classes written on photos."""

from pathlib import Path

import numpy as np
from torch import nn

from ..drawing import write_picture, write_text
from ..errors import MbtasksError
from ..evaluation.classification import classification_accuracy, confusion_counts, top_confusions
from ..evaluation.report import Picture, Section, Table
from ..evaluation.report_charts import bar_chart, confusion_matrix
from ..models import check_num_classes, list_models
from .base import BaseTask
from .image_data import ImageDataModule, Indexed
from .registry import TASKS


class ClassificationDataModule(ImageDataModule):
    """Data in a classification format under data.root (ImageFolder: `train/<class>/*`, `val/<class>/*`), or the
    embedded shapes. Classes are the training folder's class folders (the validation folder's when there is no
    training folder)."""

    format_kind, default_format = "classification", "imagefolder"
    default_size, default_augmentation = 224, "imagenet"

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            classes = self.format.classes_of(self.train_split)
            self.val_set = Indexed(self.format.dataset(self.val_split, self.transform(False), classes))
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = self.transform(True)
            self.train_set = Indexed(self.format.dataset(self.train_split, self.train_transform, self.class_names))

    @property
    def class_names(self) -> list[str]:
        return list(self.val_set.dataset.classes)


@TASKS.register("cls")
class ClassificationTask(BaseTask):
    """An ImageNet-style classifier (backbone + classifier head, torchvision's layer names), softmax cross-entropy
    with train.label_smoothing, and top-1 / top-5 over the whole validation set."""

    data_module = ClassificationDataModule
    monitor, default_model, demo_recipe = "val/top1", "mobilenet_v3_large", "cls_shapes"
    headline_metrics, profile_classes = ("top1",), 1000  # ImageNet
    progress_bar = ("val/top1",)
    prediction_file = "classes.json"

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        classifiers = list_models(kind="classifier")
        if name not in classifiers:
            raise MbtasksError(f"model.name for cls must be a classifier ({', '.join(classifiers)}), got {name!r}")
        check_num_classes(options, len(self.class_names))
        return name, {**options, "num_classes": len(self.class_names)}

    def build_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.config.train.label_smoothing)

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images, labels = batch
        scores, labels = self.model(images).float().cpu().numpy(), labels.cpu().numpy()
        # Per image, whether it is right at top-1 / top-5: small to gather, and exact (ties as the evaluator's).
        for row, index in enumerate(indices.tolist()):
            hits = classification_accuracy(scores[row : row + 1], labels[row : row + 1], ks=(1, 5))
            # and (predicted class, true class) for the report's confusion matrix
            self.results[index] = (hits["top1"], hits["top5"], int(scores[row].argmax()), int(labels[row]))

    def score(self, merged: dict) -> dict:
        if not merged:
            return {}
        hits = np.array([merged[i] for i in sorted(merged)])
        return {"top1": float(hits[:, 0].mean()), "top5": float(hits[:, 1].mean()), "num_images": len(merged)}

    def figures(self, metrics: dict) -> dict:
        return {"val/top1": metrics["top1"], "val/top5": metrics["top5"]} if metrics else {}

    def metrics_table(self) -> str:
        if not self.metrics:
            return "no images evaluated"
        top5 = "top-5" if len(self.class_names) > 5 else f"top-{len(self.class_names)}"
        return "\n".join(
            [
                f"classes        : {len(self.class_names)}",
                f"top-1 accuracy : {self.metrics['top1']:.4f}",
                f"{top5} accuracy : {self.metrics['top5']:.4f}",
            ]
        )

    def report_sections(self, data, folder: Path, worst: int) -> list[Section]:
        """Accuracy per class, the row-normalised confusion matrix, and the most frequent confusions."""
        if not self.results:
            return []
        rows = np.array([self.results[i] for i in sorted(self.results)])
        names = self.class_names
        counts = confusion_counts(rows[:, 2], rows[:, 3], len(names))
        images = counts.sum(1)
        accuracy = np.divide(np.diag(counts), images, out=np.full(len(names), np.nan), where=images > 0)
        table = Table(
            ["class", "images", "accuracy"], [[n, int(c), float(a)] for n, c, a in zip(names, images, accuracy)]
        )
        bar_chart(folder / "class_accuracy.png", names, accuracy, "Top-1 accuracy per class", "accuracy")
        shares = np.divide(counts, images[:, None], out=np.zeros(counts.shape), where=images[:, None] > 0)
        confusion_matrix(folder / "confusion_matrix.png", shares, names, "Images of each class (rows) predicted as")
        confusions = Table(
            ["true class", "predicted as", "images", "share of the class"], top_confusions(counts, names)
        )
        return [
            Section("Per-class accuracy", [table, Picture("class_accuracy.png", "top-1 accuracy per class")]),
            Section(
                "Confusion matrix",
                [Picture("confusion_matrix.png", "normalised over each true class (row)"), confusions],
                "Top confusions: the most frequent (true, predicted) pairs of different classes.",
            ),
        ]

    def top_five(self, answer: np.ndarray) -> list[tuple[str, float]]:
        """The five most probable classes (softmax of the logits `answer`) with their probabilities."""
        logits = np.asarray(answer, np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        return [(self.class_names[i], float(probabilities[i])) for i in np.argsort(-probabilities, kind="stable")[:5]]

    def draw_answer(self, photo: np.ndarray, answer: np.ndarray) -> np.ndarray:
        """The five most probable classes and their probabilities written on the photo."""
        return write_text(photo, [f"{name} {p:.2f}" for name, p in self.top_five(answer)])

    def draw_sample(self, photo: np.ndarray, target) -> np.ndarray:
        """A sample's class index, written on the photo."""
        return write_text(photo, [self.class_names[int(target)]])

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        """The five most probable classes with their probabilities, in the entry and on the photo (`draw_answer`)."""
        top = self.top_five(answer)
        write_picture(out / item["name"], self.draw_answer(item["photo"], answer))
        return {"file": item["file"], "top5": [{"class": name, "probability": round(p, 4)} for name, p in top]}
