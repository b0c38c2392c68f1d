"""Image-level tasks with Lightning: face attributes (CelebA), face embeddings (LFW verification), classification
(ImageFolder), each a MobileNet backbone plus a head from heads/image.py.

Every validation sample is kept under its index in the validation set and merged over processes once per index, so
DDP gives the figures of one process (a DistributedSampler's padding repeats samples, which count once).
"""
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import Config, ModelConfig, config_from_dict
from ..datasets.celeba import CelebA
from ..datasets.image_transforms import eval_transform, train_transform
from ..datasets.imagefolder import ImageFolder, apply_transform
from ..datasets.lfw import LFWIdentities, LFWPairs, image_path
from ..datasets.synthetic import write_synthetic_once
from ..datasets.synthetic.faces import VISIBLE_ATTRIBUTES, write_celeba_faces, write_lfw_identities, \
    write_shape_imagefolder
from ..errors import MbtasksError
from ..evaluation.attributes import attribute_metrics
from ..evaluation.classification import classification_accuracy
from ..evaluation.verification import lfw_protocol
from ..heads.image import AttributeHead, EmbeddingHead
from ..io.images import read_rgb_image
from ..losses import ArcFaceLoss, AttributeLoss, DistillationLoss, TripletLoss, attribute_pos_weight
from ..models import BACKBONE_OPTIONS, BACKBONES, MODEL_BACKBONES, ImageClassifier, build_backbone, \
    build_configured_model
from .training import configure_optimizer, gather_by_key

# data.augmentation -> training crop and colour settings, and the evaluation crop (None: the whole image, resized)
AUGMENTATIONS = {
    "imagenet": dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, color_jitter=0.4, crop_fraction=0.875),
    # Faces keep (nearly) the whole face and their colours: hair colour, pale skin and lipstick are attributes.
    "face": dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=True, color_jitter=0.0, crop_fraction=None),
    "light": dict(scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, color_jitter=0.2, crop_fraction=None),
    "none": dict(crop_fraction=None),  # training images go through the evaluation transform
}
DEFAULT_AUGMENTATION = {"attr": "face", "embed": "face", "cls": "imagenet"}
DEFAULT_SIZE = {"attr": 224, "embed": 160, "cls": 224}  # input size when data.size is not set
class Indexed(Dataset):
    """(index, *item): the key that counts a validation sample once under DDP, and a training image's teacher row."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return (index, *self.dataset[index])


class PairImages(Dataset):
    """The distinct images of an LFW pairs set, each once, as (index, image); validation embeds them, then scores
    every pair from the two embeddings (about a seventh of the forward passes of embedding pair by pair)."""

    def __init__(self, pairs: LFWPairs):
        self.pairs = pairs
        self.keys = sorted({(p.name1, p.number1) for p in pairs.pairs} | {(p.name2, p.number2) for p in pairs.pairs})

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple:
        name, number = self.keys[index]
        return index, apply_transform(self.pairs.transform, read_rgb_image(image_path(self.pairs.images_dir, name, number)))


# ---- data ----


class ImageDataModule(pl.LightningDataModule):
    """What the three image-level data modules share: the root or embedded set, transforms, loaders."""

    task = ""
    write_synthetic: Callable  # writes the embedded set (mbtasks.datasets.synthetic.faces)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        data = config.data
        self.root = Path(data.root if data.root is not None else data.synth_dir)
        size = data.size or DEFAULT_SIZE[self.task]
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        preset = DEFAULT_AUGMENTATION[self.task] if data.augmentation == "default" else data.augmentation
        if preset not in AUGMENTATIONS:
            raise MbtasksError(f"data.augmentation must be default or one of {', '.join(AUGMENTATIONS)}, "
                               f"got {data.augmentation!r}")
        self.augmentation = AUGMENTATIONS[preset]
        self.train_set = self.val_set = None

    @classmethod
    def input_size(cls, config: Config) -> int | list:
        """The network's input size this config trains at."""
        return config.data.size or DEFAULT_SIZE[cls.task]

    def prepare_data(self) -> None:
        if self.config.data.root is None:
            write_synthetic_once(self.root, type(self).write_synthetic, dict(self.config.data.synth))

    def transform(self, train: bool) -> Callable:
        settings = dict(self.augmentation)
        crop_fraction = settings.pop("crop_fraction")
        if not train or not settings:
            return eval_transform(self.size, crop_fraction)
        return train_transform(self.size, seed=self.config.train.seed, **settings)

    @property
    def category_ids(self) -> list:
        return []

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          drop_last=shuffle and len(dataset) > batch_size, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.config.data.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.config.data.val_batch_size, False)


class AttributesDataModule(ImageDataModule):
    """CelebA layout under data.root (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt), or the
    embedded faces; splits train / val / test (data.train_split, data.val_split). Items: (index, image, 0/1 targets)."""

    task = "attr"
    write_synthetic = staticmethod(write_celeba_faces)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = Indexed(CelebA(self.root, self.config.data.val_split or "val", self.transform(False)))
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = Indexed(CelebA(self.root, self.config.data.train_split or "train", self.transform(True)))

    @property
    def class_names(self) -> list[str]:
        """The attribute names, in the file's order."""
        return list(self.val_set.dataset.attribute_names)

    @property
    def train_targets(self) -> np.ndarray:
        return self.train_set.dataset.targets


class EmbeddingsDataModule(ImageDataModule):
    """Identity folders `<root>/train/<name>/*.jpg` for training and LFW (`<root>/lfw/`, `<root>/pairs.txt`) for
    verification, or the embedded faces. data.train_split names the identity folder, data.val_split the pairs file.
    Training items: (index, image, identity); validation items: (index, image) over the distinct pair images."""

    task = "embed"
    write_synthetic = staticmethod(write_lfw_identities)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            pairs = LFWPairs(self.root, self.transform(False), pairs_file=self.config.data.val_split or "pairs.txt")
            self.val_set = PairImages(pairs)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = Indexed(LFWIdentities(self.root / (self.config.data.train_split or "train"),
                                                   self.transform(True)))

    @property
    def class_names(self) -> list[str]:
        """None: the embedding network does not depend on the training identities (nor should evaluation)."""
        return []

    @property
    def num_identities(self) -> int:
        return len(self.train_set.dataset.identities)


class ClassificationDataModule(ImageDataModule):
    """ImageFolder layout under data.root (`train/<class>/*`, `val/<class>/*`), or the embedded shapes.
    Classes are the training folder's class folders (the validation folder's when there is no training folder)."""

    task = "cls"
    write_synthetic = staticmethod(write_shape_imagefolder)

    def __init__(self, config: Config):
        super().__init__(config)
        self.train_dir = self.root / (config.data.train_split or "train")
        self.val_dir = self.root / (config.data.val_split or "val")

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = Indexed(ImageFolder(self.val_dir, self.transform(False), classes=self._classes()))
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = Indexed(ImageFolder(self.train_dir, self.transform(True), classes=self.class_names))

    def _classes(self) -> list[str] | None:
        if not self.train_dir.is_dir():
            return None
        return sorted(entry.name for entry in self.train_dir.iterdir() if entry.is_dir()) or None

    @property
    def class_names(self) -> list[str]:
        return list(self.val_set.dataset.classes)


# ---- models ----

HEAD_OPTIONS = {"attr": ("hidden_channels", "dropout"), "embed": ("embedding_dim", "dropout"), "cls": ()}
LOSS_OPTIONS = {"attr": ("pos_weight",), "embed": ("loss", "distillation"), "cls": ()}


def _fold_weights_options(model: ModelConfig) -> None:
    """Make the weights file's backbone options (width, batch-norm eps) the model's defaults, in the config itself,
    so the checkpoint's config rebuilds the same network without the file."""
    from ..backbones.weights import read_weights_file

    path = model.weights or model.backbone_weights
    if path:
        saved = read_weights_file(path)
        model.options = {**{k: v for k, v in saved.options.items() if k in BACKBONE_OPTIONS}, **model.options}


def _split_options(task: str, model: ModelConfig) -> tuple[dict, dict]:
    """model.options -> (network options: backbone and head, loss options); unknown keys are errors."""
    known = (*BACKBONE_OPTIONS, *HEAD_OPTIONS[task], *LOSS_OPTIONS[task])
    unknown = [k for k in model.options if k not in known]
    if unknown and task != "cls":  # a classifier's builder checks its own options
        raise MbtasksError(f"unknown option model.options.{unknown[0]} for {task} (known: {', '.join(known)})")
    loss = {k: v for k, v in model.options.items() if k in LOSS_OPTIONS[task]}
    return {k: v for k, v in model.options.items() if k not in LOSS_OPTIONS[task]}, loss


def build_backbone_with_head(task: str, model: ModelConfig, options: dict,
                             make_head: Callable[[int, dict], nn.Module]) -> nn.Module:
    """A backbone named model.name (with model.backbone_weights loaded) and a head on its last feature map;
    model.weights, if given, is loaded into the whole network."""
    from ..backbones.weights import load_into, read_weights_file

    if model.name not in BACKBONES:
        raise MbtasksError(f"model.name for {task} must be a backbone ({', '.join(BACKBONES)}), got {model.name!r}")
    backbone = build_backbone(model.name, weights=model.backbone_weights,
                              **{k: v for k, v in options.items() if k in BACKBONE_OPTIONS})
    network = ImageClassifier(backbone, make_head(backbone.num_features, options))
    if model.weights:
        load_into(network, read_weights_file(model.weights).state_dict, model.weights)
    return network


# ---- tasks ----


class ImageTask(pl.LightningModule):
    """What the three image-level tasks share: config, metrics, optimiser, checkpoint record, per-sample outputs."""

    task = ""

    def __init__(self, config: dict, class_names: list[str], category_ids: list):
        super().__init__()
        self.save_hyperparameters()
        self.config = config_from_dict(config)
        self.class_names, self.category_ids = list(class_names), list(category_ids)
        _fold_weights_options(self.config.model)
        self.model_options, self.loss_options = _split_options(self.task, self.config.model)
        self.evaluation_options: dict = {}
        self.metrics: dict = {}
        self.evaluated_images = 0
        self._outputs: dict[int, object] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def on_validation_epoch_start(self) -> None:
        self._outputs = {}

    def merged_outputs(self) -> dict:
        """Every process's outputs, each validation index once."""
        merged = gather_by_key(self._outputs, self)
        self.evaluated_images = len(merged)
        return merged

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self, self.config.train)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        name = self.config.model.name
        checkpoint["mbtasks"] = {
            "task": self.task, "model": name, "backbone": MODEL_BACKBONES.get(name, name),
            "options": self.model_options, "class_names": self.class_names, "category_ids": [],
            "config": self.config.to_dict()}


class AttributesTask(ImageTask):
    """A backbone with one binary logit per attribute, binary cross-entropy (optional positive weights: a list, a
    mapping, or 'balanced'), and accuracy and AP per attribute over the whole validation set; mean AP picks the best.

    On the embedded faces the means over the attributes the images show are reported too (the rest are coin flips).
    """

    task = "attr"

    def __init__(self, config: dict, class_names: list[str], category_ids: list):
        super().__init__(config, class_names, category_ids)
        if not self.class_names:
            raise MbtasksError("the attribute task needs attribute names")

        def head(channels: int, options: dict) -> nn.Module:
            return AttributeHead(channels, len(self.class_names), options.get("hidden_channels"),
                                 options.get("dropout", 0.0))

        self.model = build_backbone_with_head(self.task, self.config.model, self.model_options, head)
        spec = self.loss_options.get("pos_weight")
        self.loss = AttributeLoss(None if spec == "balanced" else attribute_pos_weight(spec, self.class_names))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.loss_options.get("pos_weight") == "balanced":
            targets = self.trainer.datamodule.train_targets
            self.loss.pos_weight = attribute_pos_weight("balanced", self.class_names, targets).to(self.device)

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        _, images, targets = batch
        loss = self.loss(self.model(images), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images, targets = batch
        logits = self.model(images).float().cpu().numpy()
        for index, score, target in zip(indices.tolist(), logits, targets.cpu().numpy()):
            self._outputs[index] = (score, target)

    def on_validation_epoch_end(self) -> None:
        merged = self.merged_outputs()
        if not merged:
            return
        scores = np.stack([merged[i][0] for i in sorted(merged)])
        targets = np.stack([merged[i][1] for i in sorted(merged)]).astype(np.int64)
        result = attribute_metrics(scores, targets, self.class_names)
        self.metrics = {**result.as_dict(), "num_images": len(merged)}
        if self.config.data.root is None:
            if set(VISIBLE_ATTRIBUTES) <= set(self.class_names):
                visible = result.subset(VISIBLE_ATTRIBUTES)
                self.metrics["visible"] = {"attributes": list(VISIBLE_ATTRIBUTES),
                                           "mean_accuracy": visible.mean_accuracy,
                                           "mean_average_precision": _number(visible.mean_average_precision)}
                self.log("val/visible_mean_accuracy", visible.mean_accuracy)
        self.log("val/mean_ap", _number(result.mean_average_precision), prog_bar=True)
        self.log("val/mean_accuracy", result.mean_accuracy, prog_bar=True)

    def metrics_table(self) -> str:
        """Accuracy and AP per attribute, then their means."""
        if not self.metrics:
            return "no images evaluated"
        lines = [f"{'attribute':<22}{'accuracy':>9}{'AP':>8}", "-" * 39]
        for name, values in self.metrics["per_attribute"].items():
            lines.append(f"{name:<22}{values['accuracy']:>9.4f}{_shown(values['average_precision']):>8}")
        lines += ["-" * 39, f"{'mean (' + str(len(self.class_names)) + ')':<22}{self.metrics['mean_accuracy']:>9.4f}"
                            f"{_shown(self.metrics['mean_average_precision']):>8}"]
        if "visible" in self.metrics:
            visible = self.metrics["visible"]
            lines.append(f"{'mean, visible (' + str(len(visible['attributes'])) + ')':<22}"
                         f"{visible['mean_accuracy']:>9.4f}{_shown(visible['mean_average_precision']):>8}")
        return "\n".join(lines)


class EmbeddingsTask(ImageTask):
    """A backbone with an L2-normalised embedding (default 128-d), a margin loss over the training identities
    (ArcFace, or batch-hard triplet), optional distillation towards a teacher's embeddings, and LFW verification
    (10-fold accuracy, TAR at FAR 1e-3) on the validation pairs; the 10-fold accuracy picks the best.

    model.options: embedding_dim, dropout, loss {name: arcface|triplet|none, scale, margin},
    distillation {teacher: FILE (.npy, or .pt read with weights_only), weight}: one row per training image, in the
    training set's order (identities by name, then file names).
    """

    task = "embed"
    LOSSES = {"arcface": ("scale", "margin"), "triplet": ("margin",), "none": ()}

    def __init__(self, config: dict, class_names: list[str], category_ids: list):
        super().__init__(config, class_names, category_ids)
        self.model_options.setdefault("embedding_dim", 128)
        self.embedding_dim = int(self.model_options["embedding_dim"])

        def head(channels: int, options: dict) -> nn.Module:
            return EmbeddingHead(channels, self.embedding_dim, options.get("dropout", 0.0))

        self.model = build_backbone_with_head(self.task, self.config.model, self.model_options, head)
        self.loss_spec = dict(self.loss_options.get("loss") or {"name": "arcface"})
        name = self.loss_spec.pop("name", "arcface")
        if name not in self.LOSSES or any(k not in self.LOSSES[name] for k in self.loss_spec):
            raise MbtasksError(f"model.options.loss must be one of {', '.join(self.LOSSES)} with "
                               f"{'; '.join(f'{k}: {v}' for k, v in self.LOSSES.items() if v)}, got "
                               f"{self.loss_options.get('loss')!r}")
        self.loss_name = name
        self.distillation_spec = self.loss_options.get("distillation")
        if name == "none" and not self.distillation_spec:
            raise MbtasksError("model.options.loss none needs model.options.distillation")
        # Built in setup("fit"): ArcFace's size is the training identities', and the teacher file is read only
        # for training (an evaluation must not need it).
        self.margin_loss: nn.Module | None = None
        self.distillation: DistillationLoss | None = None

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.margin_loss is not None or self.distillation is not None:
            return
        data = self.trainer.datamodule
        if self.loss_name == "arcface":
            self.margin_loss = ArcFaceLoss(self.embedding_dim, data.num_identities, **self.loss_spec)
        elif self.loss_name == "triplet":
            self.margin_loss = TripletLoss(**self.loss_spec)
        if self.distillation_spec:
            spec = dict(self.distillation_spec)
            if "teacher" not in spec or any(k not in ("teacher", "weight") for k in spec):
                raise MbtasksError(f"model.options.distillation needs teacher: FILE and optionally weight, "
                                   f"got {self.distillation_spec!r}")
            self.distillation = DistillationLoss.from_file(spec["teacher"], len(data.train_set), self.embedding_dim,
                                                           float(spec.get("weight", 1.0)))

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        indices, images, labels = batch
        embeddings = self.model(images)
        losses = {}
        if self.margin_loss is not None:
            losses["margin"] = self.margin_loss(embeddings, labels)
        if self.distillation is not None:
            losses["distillation"] = self.distillation(embeddings, indices)
        loss = sum(losses.values())
        if len(losses) > 1:
            self.log_dict({f"train/{k}_loss": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images = batch
        for index, embedding in zip(indices.tolist(), self.model(images).float().cpu().numpy()):
            self._outputs[index] = embedding

    def on_validation_epoch_end(self) -> None:
        merged = self.merged_outputs()
        val_set = self.trainer.datamodule.val_set
        embedding = {key: merged[i] for i, key in enumerate(val_set.keys) if i in merged}
        # Pairs whose two images were embedded (all of them, unless limit_val_batches or the sanity check cut in).
        pairs = [p for p in val_set.pairs.pairs
                 if (p.name1, p.number1) in embedding and (p.name2, p.number2) in embedding]
        if len({p.fold for p in pairs}) < 2:
            self.metrics = {}
            self.log("val/accuracy", 0.0, prog_bar=True)
            return
        # Embeddings are unit vectors: the dot product is the cosine similarity.
        scores = np.array([float(embedding[(p.name1, p.number1)] @ embedding[(p.name2, p.number2)]) for p in pairs])
        result = lfw_protocol(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
        self.metrics = {**result.as_dict(), "num_pairs": len(pairs), "num_images": len(merged)}
        self.log("val/accuracy", result.accuracy_mean, prog_bar=True)
        self.log("val/tar", _number(result.tar))

    def metrics_table(self) -> str:
        """The LFW figures: 10-fold accuracy with its spread, per-fold accuracies, TAR at the FAR."""
        m = self.metrics
        if not m:
            return "no pairs evaluated"
        folds = " ".join(f"{a:.3f}" for a in m["fold_accuracies"])
        return "\n".join([
            f"pairs                  : {m['num_pairs']} ({len(m['fold_accuracies'])} folds, {m['num_images']} images)",
            f"verification accuracy  : {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f}",
            f"accuracy per fold      : {folds}",
            f"TAR @ FAR={m['far']:g}        : {_shown(m['tar'])}"])


class ClassificationTask(ImageTask):
    """An ImageNet-style classifier (models.MODELS: backbone + classifier head, torchvision's layer names),
    softmax cross-entropy with train.label_smoothing, and top-1 / top-5 over the whole validation set."""

    task = "cls"

    def __init__(self, config: dict, class_names: list[str], category_ids: list):
        super().__init__(config, class_names, category_ids)
        model = self.config.model
        if model.name not in BACKBONES:
            raise MbtasksError(f"model.name for cls must be a classifier ({', '.join(BACKBONES)}), got {model.name!r}")
        given = self.model_options.get("num_classes", len(self.class_names))
        if given != len(self.class_names):
            raise MbtasksError(f"model.options.num_classes is {given} but the data set has "
                               f"{len(self.class_names)} classes")
        self.model_options = {**self.model_options, "num_classes": len(self.class_names)}
        self.model = build_configured_model(model.name, self.model_options, model.weights, model.backbone_weights)
        self.loss = nn.CrossEntropyLoss(label_smoothing=self.config.train.label_smoothing)

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        _, images, labels = batch
        loss = self.loss(self.model(images), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple, batch_index: int) -> None:
        indices, images, labels = batch
        scores, labels = self.model(images).float().cpu().numpy(), labels.cpu().numpy()
        # Per image, whether it is right at top-1 / top-5: small to gather, and exact (ties as the evaluator's).
        for row, index in enumerate(indices.tolist()):
            hits = classification_accuracy(scores[row:row + 1], labels[row:row + 1], ks=(1, 5))
            self._outputs[index] = (hits["top1"], hits["top5"])

    def on_validation_epoch_end(self) -> None:
        merged = self.merged_outputs()
        if not merged:
            return
        hits = np.array([merged[i] for i in sorted(merged)])
        self.metrics = {"top1": float(hits[:, 0].mean()), "top5": float(hits[:, 1].mean()), "num_images": len(merged)}
        self.log("val/top1", self.metrics["top1"], prog_bar=True)
        self.log("val/top5", self.metrics["top5"])

    def metrics_table(self) -> str:
        if not self.metrics:
            return "no images evaluated"
        top5 = "top-5" if len(self.class_names) > 5 else f"top-{len(self.class_names)}"
        return "\n".join([f"classes        : {len(self.class_names)}",
                          f"top-1 accuracy : {self.metrics['top1']:.4f}",
                          f"{top5} accuracy : {self.metrics['top5']:.4f}"])


def _number(value: float) -> float:
    # A NaN best-model score would never be beaten: log 0 for "not defined" (no positives, no measurable FAR).
    return 0.0 if value is None or value != value else float(value)


def _shown(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"
