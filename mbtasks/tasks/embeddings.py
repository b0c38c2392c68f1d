"""Face embeddings: identity folders for training, LFW pairs for verification, a backbone with a unit embedding."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..backbones import BACKBONES
from ..datasets.imagefolder import apply_transform
from ..datasets.lfw import LFWIdentities, LFWPairs, image_path
from ..datasets.synthetic.faces import write_lfw_identities
from ..errors import MbtasksError
from ..evaluation.verification import lfw_protocol
from ..io.images import read_rgb_image
from ..models.losses import ArcFaceLoss, DistillationLoss, TripletLoss
from .base import BaseTask, shown
from .image_data import ImageDataModule, Indexed


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
        return index, apply_transform(self.pairs.transform,
                                      read_rgb_image(image_path(self.pairs.images_dir, name, number)))


class EmbeddingsDataModule(ImageDataModule):
    """Identity folders `<root>/train/<name>/*.jpg` for training and LFW (`<root>/lfw/`, `<root>/pairs.txt`) for
    verification, or the embedded faces. data.train_split names the identity folder, data.val_split the pairs file.
    Training items: (index, image, identity); validation items: (index, image) over the distinct pair images."""

    write_synthetic = staticmethod(write_lfw_identities)
    default_size, default_augmentation = 160, "face"

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            pairs = LFWPairs(self.root, self.transform(False), pairs_file=self.config.data.val_split or "pairs.txt")
            self.val_set = PairImages(pairs)
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = self.transform(True)
            self.train_set = Indexed(LFWIdentities(self.root / (self.config.data.train_split or "train"),
                                                   self.train_transform))

    @property
    def class_names(self) -> list[str]:
        """None: the embedding network does not depend on the training identities (nor should evaluation)."""
        return []

    @property
    def num_identities(self) -> int:
        return len(self.train_set.dataset.identities)


class EmbeddingsTask(BaseTask):
    """A backbone with an L2-normalised embedding (default 128-d), a margin loss over the training identities
    (ArcFace, or batch-hard triplet), optional distillation towards a teacher's embeddings, and LFW verification
    (10-fold accuracy, TAR at FAR 1e-3) on the validation pairs; the 10-fold accuracy picks the best.

    model.options: the backbone's, embedding_dim, dropout, loss {name: arcface|triplet|none, scale, margin},
    distillation {teacher: FILE (.npy, or .pt read with weights_only), weight}: one row per training image, in the
    training set's order (identities by name, then file names).
    """

    task = "embed"
    progress_bar = ("val/accuracy",)
    LOSSES = {"arcface": ("scale", "margin"), "triplet": ("margin",), "none": ()}

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        if name not in BACKBONES:
            raise MbtasksError(f"model.name for embed must be a backbone ({', '.join(BACKBONES)}), got {name!r}")
        given_loss, self.distillation_spec = options.pop("loss", None), options.pop("distillation", None)
        self.loss_spec = dict(given_loss or {"name": "arcface"})
        self.loss_name = self.loss_spec.pop("name", "arcface")
        if self.loss_name not in self.LOSSES or any(k not in self.LOSSES[self.loss_name] for k in self.loss_spec):
            raise MbtasksError(f"model.options.loss must be one of {', '.join(self.LOSSES)} with "
                               f"{'; '.join(f'{k}: {v}' for k, v in self.LOSSES.items() if v)}, got {given_loss!r}")
        if self.loss_name == "none" and not self.distillation_spec:
            raise MbtasksError("model.options.loss none needs model.options.distillation")
        # Built in setup("fit"): ArcFace's size is the training identities', and the teacher file is read only
        # for training (an evaluation must not need it).
        self.margin_loss: nn.Module | None = None
        self.distillation: DistillationLoss | None = None
        options.setdefault("embedding_dim", 128)
        self.embedding_dim = int(options["embedding_dim"])
        return f"embedding_{name}", options

    def setup(self, stage: str) -> None:
        super().setup(stage)
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
            self.results[index] = embedding

    def score(self, merged: dict) -> dict:
        val_set = self.trainer.datamodule.val_set
        embedding = {key: merged[i] for i, key in enumerate(val_set.keys) if i in merged}
        # Pairs whose two images were embedded (all of them, unless limit_val_batches or the sanity check cut in).
        pairs = [p for p in val_set.pairs.pairs
                 if (p.name1, p.number1) in embedding and (p.name2, p.number2) in embedding]
        if len({p.fold for p in pairs}) < 2:
            return {}
        # Embeddings are unit vectors: the dot product is the cosine similarity.
        scores = np.array([float(embedding[(p.name1, p.number1)] @ embedding[(p.name2, p.number2)]) for p in pairs])
        result = lfw_protocol(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
        return {**result.as_dict(), "num_pairs": len(pairs), "num_images": len(merged)}

    def figures(self, metrics: dict) -> dict:
        if not metrics:
            return {"val/accuracy": 0.0}
        return {"val/accuracy": metrics["accuracy_mean"], "val/tar": metrics["tar"]}

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
            f"TAR @ FAR={m['far']:g}        : {shown(m['tar'])}"])
