"""Face attributes: CelebA-format data, a backbone with one binary logit per attribute, mean AP every validation;
the attributes written on photos."""

import math
from pathlib import Path

import numpy as np
from torch import nn

from ..backbones import BACKBONES
from ..datasets.synthetic.faces import VISIBLE_ATTRIBUTES
from ..drawing import write_picture, write_text
from ..errors import MbtasksError
from ..evaluation.attributes import attribute_metrics
from ..evaluation.report import Picture, Section, Table
from ..evaluation.report_charts import bar_chart
from ..models.losses import AttributeLoss, attribute_pos_weight
from .base import BaseTask, loggable, shown
from .image_data import ImageDataModule, Indexed
from .registry import TASKS


class AttributesDataModule(ImageDataModule):
    """Data in an attributes format under data.root (CelebA: img_align_celeba/, list_attr_celeba.txt,
    list_eval_partition.txt), or the embedded faces; splits train / val / test (data.train_split, data.val_split).
    Items: (index, image, 0/1 targets)."""

    format_kind, default_format = "attributes", "celeba"
    default_size, default_augmentation = 224, "face"

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = Indexed(self.format.dataset(self.val_split, self.transform(False)))
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = self.transform(True)
            self.train_set = Indexed(self.format.dataset(self.train_split, self.train_transform))

    @property
    def class_names(self) -> list[str]:
        """The attribute names, in the file's order."""
        return list(self.val_set.dataset.attribute_names)

    @property
    def train_targets(self) -> np.ndarray:
        return self.train_set.dataset.targets


@TASKS.register("attr")
class AttributesTask(BaseTask):
    """A backbone with one binary logit per attribute, binary cross-entropy (optional positive weights: a list, a
    mapping, or 'balanced'), and accuracy and AP per attribute over the whole validation set; mean AP picks the best.

    On the embedded faces the means over the attributes the images show are reported too (the rest are coin flips).
    model.options: the backbone's, hidden_channels, dropout, pos_weight.
    """

    data_module = AttributesDataModule
    monitor, default_model, demo_recipe = "val/mean_ap", "mobilenet_v1", "attr_faces"
    headline_metrics, profile_classes = ("mean_average_precision",), 40  # CelebA's 40 attributes
    progress_bar = ("val/mean_ap", "val/mean_accuracy")
    prediction_defaults = {"threshold": 0.5}
    prediction_file = "attributes.json"

    loss_options = ("pos_weight",)

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        if name not in BACKBONES:
            raise MbtasksError(f"model.name for attr must be a backbone ({', '.join(BACKBONES)}), got {name!r}")
        if not self.class_names:
            raise MbtasksError("the attribute task needs attribute names")
        return f"attributes_{name}", {**options, "num_attributes": len(self.class_names)}

    @property
    def balanced(self) -> bool:
        """pos_weight: balanced, whose weights come from the training targets (set in setup)."""
        return self.loss_settings.get("pos_weight") == "balanced"

    def build_loss(self) -> nn.Module:
        spec = self.loss_settings.get("pos_weight")
        return AttributeLoss(None if self.balanced else attribute_pos_weight(spec, self.class_names))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.balanced:
            targets = self.trainer.datamodule.train_targets
            self.loss.pos_weight = attribute_pos_weight("balanced", self.class_names, targets).to(self.device)

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images, targets = batch
        logits = self.model(images).float().cpu().numpy()
        for index, score, target in zip(indices.tolist(), logits, targets.cpu().numpy()):
            self.results[index] = (score, target)

    def score(self, merged: dict) -> dict:
        if not merged:
            return {}
        scores = np.stack([merged[i][0] for i in sorted(merged)])
        targets = np.stack([merged[i][1] for i in sorted(merged)]).astype(np.int64)
        result = attribute_metrics(scores, targets, self.class_names)
        metrics = {**result.as_dict(), "num_images": len(merged)}
        if self.config.data.root is None and set(VISIBLE_ATTRIBUTES) <= set(self.class_names):
            visible = result.subset(VISIBLE_ATTRIBUTES)
            metrics["visible"] = {
                "attributes": list(VISIBLE_ATTRIBUTES),
                "mean_accuracy": visible.mean_accuracy,
                "mean_average_precision": loggable(visible.mean_average_precision),
            }
        return metrics

    def figures(self, metrics: dict) -> dict:
        if not metrics:
            return {}
        figures = {"val/mean_ap": metrics["mean_average_precision"], "val/mean_accuracy": metrics["mean_accuracy"]}
        if "visible" in metrics:
            figures["val/visible_mean_accuracy"] = metrics["visible"]["mean_accuracy"]
        return figures

    def metrics_table(self) -> str:
        """Accuracy and AP per attribute, then their means."""
        if not self.metrics:
            return "no images evaluated"
        lines = [f"{'attribute':<22}{'accuracy':>9}{'AP':>8}", "-" * 39]
        for name, values in self.metrics["per_attribute"].items():
            lines.append(f"{name:<22}{values['accuracy']:>9.4f}{shown(values['average_precision']):>8}")
        lines += [
            "-" * 39,
            f"{'mean (' + str(len(self.class_names)) + ')':<22}{self.metrics['mean_accuracy']:>9.4f}"
            f"{shown(self.metrics['mean_average_precision']):>8}",
        ]
        if "visible" in self.metrics:
            visible = self.metrics["visible"]
            lines.append(
                f"{'mean, visible (' + str(len(visible['attributes'])) + ')':<22}"
                f"{visible['mean_accuracy']:>9.4f}{shown(visible['mean_average_precision']):>8}"
            )
        return "\n".join(lines)

    def report_sections(self, data, folder: Path, worst: int) -> list[Section]:
        """Accuracy and AP per attribute, with how many images show it, and AP as bars."""
        if not self.metrics:
            return []
        positives = np.stack([self.results[i][1] for i in sorted(self.results)]).sum(0)
        per = self.metrics["per_attribute"]
        names = list(per)
        ap = [math.nan if per[n]["average_precision"] is None else per[n]["average_precision"] for n in names]
        table = Table(
            ["attribute", "images with it", "accuracy", "AP"],
            [[n, int(c), per[n]["accuracy"], a] for n, c, a in zip(names, positives, ap)],
        )
        bar_chart(folder / "attribute_ap.png", names, ap, "AP per attribute", "average precision")
        return [
            Section(
                "Per-attribute figures",
                [table, Picture("attribute_ap.png", "AP per attribute")],
                "AP: the area under the attribute's precision-recall curve (n/a: no image shows it); accuracy at "
                "logit 0 (probability 0.5).",
            )
        ]

    def draw_answer(self, photo: np.ndarray, answer: np.ndarray) -> np.ndarray:
        """The attributes of probability at least `threshold` written on the photo, most likely first (`answer`: one
        logit per attribute; ground truth as logits of +-inf, its attributes then at 1.00)."""
        probabilities = 1 / (1 + np.exp(-np.asarray(answer, np.float64)))
        threshold = self.prediction_options["threshold"]
        written = [
            f"{self.class_names[i]} {probabilities[i]:.2f}"
            for i in np.argsort(-probabilities, kind="stable")
            if probabilities[i] >= threshold
        ]
        return write_text(photo, written or [f"no attribute at {threshold:g} or above"])

    def draw_sample(self, photo: np.ndarray, target) -> np.ndarray:
        """A sample's attributes (its targets of 1), written on it."""
        present = [name for name, value in zip(self.class_names, np.asarray(target).tolist()) if value > 0.5]
        return write_text(photo, present or ["no attribute"])

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        """The probability of every attribute; on the photo, those at or above `threshold` (`draw_answer`)."""
        probabilities = 1 / (1 + np.exp(-answer.astype(np.float64)))
        write_picture(out / item["name"], self.draw_answer(item["photo"], answer))
        return {
            "file": item["file"],
            "attributes": {name: round(float(p), 4) for name, p in zip(self.class_names, probabilities)},
        }
