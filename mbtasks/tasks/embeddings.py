"""Face embeddings: identity folders for training, LFW pairs for verification, a backbone with a unit embedding;
photos embedded, and pairs of them verified at the threshold the validation chose."""

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..backbones import BACKBONES
from ..datasets.imagefolder import apply_transform
from ..datasets.lfw import LFWPairs, image_path
from ..drawing import write_text
from ..errors import MbtasksError
from ..evaluation.report import Picture, Section, Table
from ..evaluation.report_charts import curves, histograms
from ..evaluation.verification import best_threshold, lfw_protocol, roc_curve
from ..io.images import read_rgb_image
from ..io.outputs import replaced_atomically, write_text_atomically
from ..models.losses import ArcFaceLoss, DistillationLoss, TripletLoss
from .base import BaseTask, shown
from .image_data import ImageDataModule, Indexed
from .registry import TASKS


class PairImages(Dataset):
    """The distinct images of an LFW pairs set, each once, as (index, image); validation embeds them, then scores
    every pair from the two embeddings (about a seventh of the forward passes of embedding pair by pair)."""

    def __init__(self, pairs: LFWPairs):
        self.pairs = pairs
        self.keys = pairs.image_keys()

    def check_files(self) -> None:
        self.pairs.check_files()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple:
        name, number = self.keys[index]
        return index, apply_transform(
            self.pairs.transform, read_rgb_image(image_path(self.pairs.images_dir, name, number))
        )


class EmbeddingsDataModule(ImageDataModule):
    """Data in an embeddings format under data.root (LFW's: identity folders `<root>/train/<name>/*.jpg` for training,
    `<root>/lfw/` and `<root>/pairs.txt` for verification), or the embedded faces. data.train_split names the identity
    folder, data.val_split the pairs file. Training items: (index, image, identity); validation items: (index, image)
    over the distinct pair images."""

    format_kind, default_format = "embeddings", "lfw"
    default_size, default_augmentation = 160, "face"

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            self.val_set = PairImages(self.format.pairs(self.val_split, self.transform(False)))
        if stage in (None, "fit") and self.train_set is None:
            self.train_transform = self.transform(True)
            self.train_set = Indexed(self.format.identities(self.train_split, self.train_transform))

    @property
    def class_names(self) -> list[str]:
        """None: the embedding network does not depend on the training identities (nor should evaluation)."""
        return []

    @property
    def num_identities(self) -> int:
        return len(self.train_set.dataset.identities)


@TASKS.register("embed")
class EmbeddingsTask(BaseTask):
    """A backbone with an L2-normalised embedding (default 128-d), a margin loss over the training identities
    (ArcFace, or batch-hard triplet), optional distillation towards a teacher's embeddings, and LFW verification
    (10-fold accuracy, TAR at FAR 1e-3) on the validation pairs; the 10-fold accuracy picks the best.

    model.options: the backbone's, embedding_dim, dropout, loss {name: arcface|triplet|none, scale, margin},
    distillation {teacher: FILE (.npy, or .pt read with weights_only), weight}: one row per training image, in the
    training set's order (identities by name, then file names).
    """

    data_module = EmbeddingsDataModule
    monitor, default_model, demo_recipe = "val/accuracy", "mobilenet_v1", "embed_faces"
    headline_metrics, profile_classes, graph_outputs = ("accuracy_mean",), 0, ("embeddings",)
    progress_bar = ("val/accuracy",)
    prediction_defaults = {"threshold": None, "pairs": None}
    prediction_file = "embeddings.json"
    pairs: tuple = ()  # predict --pairs: (as written, resolved) pairs of files, and the distance threshold
    pair_threshold: tuple[float, str] = (math.nan, "")
    LOSSES = {"arcface": ("scale", "margin"), "triplet": ("margin",), "none": ()}
    loss_options = ("loss", "distillation")

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        if name not in BACKBONES:
            raise MbtasksError(f"model.name for embed must be a backbone ({', '.join(BACKBONES)}), got {name!r}")
        return f"embedding_{name}", {"embedding_dim": 128, **options}

    @property
    def embedding_dim(self) -> int:
        return int(self.model_options["embedding_dim"])

    def build_loss(self) -> None:
        """Checks the loss settings; the losses themselves are built in setup("fit"): ArcFace's size is the training
        identities', and the teacher file is read only for training (an evaluation must not need it)."""
        given_loss, self.distillation_spec = self.loss_settings.get("loss"), self.loss_settings.get("distillation")
        self.loss_spec = dict(given_loss or {"name": "arcface"})
        self.loss_name = self.loss_spec.pop("name", "arcface")
        if self.loss_name not in self.LOSSES or any(k not in self.LOSSES[self.loss_name] for k in self.loss_spec):
            raise MbtasksError(
                f"model.options.loss must be one of {', '.join(self.LOSSES)} with "
                f"{'; '.join(f'{k}: {v}' for k, v in self.LOSSES.items() if v)}, got {given_loss!r}"
            )
        if self.loss_name == "none" and not self.distillation_spec:
            raise MbtasksError("model.options.loss none needs model.options.distillation")
        self.margin_loss: nn.Module | None = None
        self.distillation: DistillationLoss | None = None
        return None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        data = self.trainer.datamodule
        if self.margin_loss is None and self.loss_name != "none":
            self.margin_loss = self.build_margin_loss(data.num_identities)
        if self.distillation is None and self.distillation_spec:
            spec = dict(self.distillation_spec)
            if "teacher" not in spec or any(k not in ("teacher", "weight") for k in spec):
                raise MbtasksError(
                    f"model.options.distillation needs teacher: FILE and optionally weight, "
                    f"got {self.distillation_spec!r}"
                )
            self.distillation = DistillationLoss.from_file(
                spec["teacher"], len(data.train_set), self.embedding_dim, float(spec.get("weight", 1.0))
            )

    def build_margin_loss(self, identities: int) -> nn.Module:
        """ArcFace over this many training identities, or the batch-hard triplet loss."""
        if self.loss_name == "arcface":
            return ArcFaceLoss(self.embedding_dim, identities, **self.loss_spec, seed=self.config.train.seed)
        return TripletLoss(**self.loss_spec)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A module rebuilt from a checkpoint (load_from_checkpoint) builds the ArcFace loss its identity vectors
        belong to before they load; training builds it in setup("fit"), from the data."""
        identities = checkpoint.get("state_dict", {}).get("margin_loss.weight")
        if self.margin_loss is None and self.loss_name == "arcface" and identities is not None:
            self.margin_loss = self.build_margin_loss(len(identities))

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

    def pair_scores(self, merged: dict, val_set: PairImages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cosine similarity, same person, fold) of each pair whose two images were embedded (all of them, unless
        limit_val_batches or the sanity check cut in)."""
        embedding = {key: merged[i] for i, key in enumerate(val_set.keys) if i in merged}
        pairs = [
            p for p in val_set.pairs.pairs if (p.name1, p.number1) in embedding and (p.name2, p.number2) in embedding
        ]
        # Embeddings are unit vectors: the dot product is the cosine similarity.
        scores = np.array([float(embedding[(p.name1, p.number1)] @ embedding[(p.name2, p.number2)]) for p in pairs])
        return scores, np.array([p.same for p in pairs], bool), np.array([p.fold for p in pairs])

    def score(self, merged: dict) -> dict:
        scores, same, folds = self.pair_scores(merged, self.trainer.datamodule.val_set)
        if len(set(folds.tolist())) < 2:
            return {}
        result = lfw_protocol(scores, same, folds)
        # The similarity threshold for new pairs: the most accurate one over all validation pairs.
        return {
            **result.as_dict(),
            "threshold": best_threshold(scores, same)[0],
            "num_pairs": len(scores),
            "num_images": len(merged),
        }

    def report_sections(self, data, folder: Path, worst: int) -> list[Section]:
        """The ROC curve, the distances of same and different pairs, and the accuracy of each fold."""
        if not self.metrics:
            return []
        scores, same, _ = self.pair_scores(self.results, data.val_set)
        far, tar, area = roc_curve(scores, same)
        curves(folder / "roc.png", {f"ROC (area {area:.4f})": (far, tar)}, "Verification ROC", "false accept rate",
               "true accept rate", diagonal=True)  # fmt: skip
        distances = np.sqrt(np.clip(2 - 2 * scores, 0, None))  # between unit vectors
        histograms(folder / "distances.png", {"same person": distances[same], "different people": distances[~same]},
                   "Distances between the embeddings of a pair", "distance")  # fmt: skip
        m = self.metrics
        folds = Table(
            ["fold", "accuracy", "threshold (cosine similarity)"],
            [[i + 1, a, t] for i, (a, t) in enumerate(zip(m["fold_accuracies"], m["fold_thresholds"]))],
        )
        return [
            Section(
                "ROC and distances",
                [
                    Picture("roc.png", "true accept rate against false accept rate, all pairs"),
                    Picture("distances.png", "distance between unit embeddings: same person and different people"),
                ],
                f"{int(same.sum())} same-person and {int((~same).sum())} different-people pairs.",
            ),  # fmt: skip
            Section("Accuracy per fold", [folds], "Each fold scored at the threshold the other folds chose (LFW)."),
        ]

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
        return "\n".join(
            [
                f"pairs                  : {m['num_pairs']} "
                f"({len(m['fold_accuracies'])} folds, {m['num_images']} images)",
                f"verification accuracy  : {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f}",
                f"accuracy per fold      : {folds}",
                f"TAR @ FAR={m['far']:g}        : {shown(m['tar'])}",
                f"threshold (all pairs)  : {m['threshold']:.4f} (cosine similarity)",
            ]
        )

    # ---- predict ----

    def prepare_predictions(self, files: list[Path]) -> None:
        """With --pairs: the pairs file read and matched to the input files, and the threshold, before any work."""
        if self.prediction_options["pairs"]:
            self.pairs = read_file_pairs(self.prediction_options["pairs"], {path.resolve() for path in files})
            self.pair_threshold = self._distance_threshold()

    def _distance_threshold(self) -> tuple[float, str]:
        """(distance between unit embeddings below which a pair is the same person, where it comes from)."""
        if self.prediction_options["threshold"] is not None:
            return float(self.prediction_options["threshold"]), "--threshold"
        similarity = self.metrics.get("threshold")
        if similarity is None and self.metrics.get("fold_thresholds"):
            similarity = float(np.mean(self.metrics["fold_thresholds"]))  # checkpoints from before `threshold`
        if similarity is None:
            raise MbtasksError("the checkpoint's validation chose no threshold (it scored no pairs): give --threshold")
        # |a - b|^2 = 2 - 2 a.b for unit vectors: similarity above s is distance below sqrt(2 - 2 s).
        return math.sqrt(
            max(0.0, 2 - 2 * similarity)
        ), f"the checkpoint's validation: cosine similarity {similarity:.4f}"

    def write_prediction(self, out: Path, item: dict, answer: np.ndarray) -> dict:
        return {"file": item["file"], "embedding": answer}

    def draw_sample(self, photo: np.ndarray, target) -> np.ndarray:
        """A training face with its identity's index (validation faces have none: they are compared in pairs)."""
        return photo.copy() if target is None else write_text(photo, [f"identity {int(target)}"])

    def prediction_paths(self, names: list[str]) -> list[str]:
        return ["embeddings.npy", self.prediction_file]  # no file per photo

    def write_predictions(self, out: Path, entries: list[dict]) -> list[str]:
        """embeddings.npy (one row per photo) and embeddings.json (the files in the same order); with --pairs, each
        pair's distance and verdict."""
        dim = self.model_options["embedding_dim"]
        with replaced_atomically(out / "embeddings.npy") as temporary:  # its name ends in .npy: np.save adds none
            np.save(
                temporary, np.stack([e["embedding"] for e in entries]) if entries else np.zeros((0, dim), np.float32)
            )
        write_text_atomically(
            out / self.prediction_file,
            json.dumps({"embeddings": "embeddings.npy", "files": [e["file"] for e in entries]}, indent=1),
        )
        lines = [f"wrote {out / 'embeddings.npy'} ({len(entries)} x {dim}) and {out / self.prediction_file}"]
        if not self.pairs:
            return lines
        threshold, source = self.pair_threshold
        embedding = {Path(e["file"]).resolve(): e["embedding"] for e in entries}
        lines.append(f"same person below distance {threshold:.4f} ({source})")
        for (first, second), (a, b) in self.pairs:
            if a not in embedding or b not in embedding:
                lines.append(f"{first}\t{second}\tn/a (unreadable image)")
                continue
            distance = float(np.linalg.norm(embedding[a] - embedding[b]))
            lines.append(
                f"{first}\t{second}\tdistance {distance:.4f}\t{'same' if distance < threshold else 'different'}"
            )
        return lines


def read_file_pairs(path: str | Path, known: set[Path]) -> list[tuple[tuple[str, str], tuple[Path, Path]]]:
    """A pairs file: one pair of image paths a line (tab-separated, or two whitespace-separated fields; `#`
    comments), relative to the current folder; every path must be one of the `known` (resolved) input files.
    Returns each pair as written and resolved."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise MbtasksError(f"cannot read the pairs file ({type(error).__name__})", path) from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise MbtasksError(f"line {number}: expected two image paths, got {len(fields)} fields", path)
        given = (fields[0].strip(), fields[1].strip())
        resolved = (Path(given[0]).expanduser().resolve(), Path(given[1]).expanduser().resolve())
        for name, file in zip(given, resolved):
            if file not in known:
                raise MbtasksError(f"line {number}: {name} is not among the input images", path)
        pairs.append((given, resolved))
    if not pairs:
        raise MbtasksError("holds no pairs", path)
    return pairs
