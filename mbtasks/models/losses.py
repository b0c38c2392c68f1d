"""Losses of the image-level tasks: weighted binary cross-entropy, ArcFace and triplet margins, embedding distillation.

Classification uses torch's cross-entropy with `label_smoothing`; it needs no module of its own.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MbtasksError


def attribute_pos_weight(
    spec, names: Sequence[str], targets: np.ndarray | None = None, max_weight: float = 10.0
) -> torch.Tensor | None:
    """Positive weights per attribute from a config value: None, a list (one per attribute), a dict name -> weight
    (others 1), or "balanced" (negatives / positives of each attribute in `targets`, at most `max_weight`)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise MbtasksError(f"pos_weight must be a list, a mapping or 'balanced', got {spec!r}")
        if targets is None:
            raise MbtasksError("pos_weight 'balanced' needs the training targets")
        positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
        negatives = len(targets) - positives
        return torch.tensor(
            np.clip(negatives / np.maximum(positives, 1), 1 / max_weight, max_weight), dtype=torch.float32
        )
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in names]
        if unknown:
            raise MbtasksError(f"pos_weight names an unknown attribute {unknown[0]!r}")
        return torch.tensor([float(spec.get(name, 1.0)) for name in names], dtype=torch.float32)
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise MbtasksError(f"pos_weight has {len(spec)} values for {len(names)} attributes")
        return torch.tensor([float(v) for v in spec], dtype=torch.float32)
    raise MbtasksError(f"pos_weight must be a list, a mapping or 'balanced', got {spec!r}")


class AttributeLoss(nn.Module):
    """Binary cross-entropy on attribute logits, averaged over images and attributes; optional positive weights."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        # Not persistent: the weights follow from the config (and the data), and resuming must not depend on them.
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=self.pos_weight)


class ArcFaceLoss(nn.Module):
    """Additive angular margin (ArcFace): softmax over scale * cos(theta + margin) for the true identity.

    One learned unit vector per training identity; past theta = pi - margin the margin would make the logit grow
    again, so there cos(theta) - margin * sin(margin) takes over (insightface's fallback).
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5, seed: int = 0):
        super().__init__()
        if num_classes < 2:
            raise MbtasksError(f"ArcFace needs at least 2 training identities, got {num_classes}")
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        # Its own seeded generator: it is built when training starts, after Lightning has drawn from the global one
        # by amounts that differ with the number of processes.
        nn.init.xavier_uniform_(self.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        sine = torch.sqrt(1 - cosine**2)
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        with_margin = torch.where(
            cosine > math.cos(math.pi - self.margin),
            with_margin,
            cosine - math.sin(math.pi - self.margin) * self.margin,
        )
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return F.cross_entropy(self.scale * torch.where(target, with_margin, cosine), labels)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on L2-normalised embeddings: per anchor, its farthest positive and nearest negative.

    Anchors without a positive (or a negative) in the batch are left out; a batch with none gives 0.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(embeddings, embeddings)
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
        valid = positive.any(dim=1) & (~same).any(dim=1)
        if not valid.any():
            return embeddings.sum() * 0.0  # keeps the graph (DDP expects every parameter to get a gradient)
        return F.relu(hardest_positive[valid] - hardest_negative[valid] + self.margin).mean()


def read_teacher_embeddings(path: str | Path) -> torch.Tensor:
    """A (images, dim) float array from a .npy file, or from a .pt / .pth file (a tensor, or {"embeddings": tensor})
    read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise MbtasksError("no such teacher embeddings file", path)
    try:
        if path.suffix == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # numpy and torch raise many types for a bad file; all mean the same to a user
        raise MbtasksError(
            f"cannot read teacher embeddings ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})",
            path,
        ) from None
    if isinstance(data, dict) and isinstance(data.get("embeddings"), torch.Tensor):
        data = data["embeddings"]
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise MbtasksError("teacher embeddings must be a float array (or {'embeddings': tensor})", path)
    return data.float()


class DistillationLoss(nn.Module):
    """Pull each training image's embedding towards a teacher's (one row per training image, in the training set's
    order): 1 - cosine similarity, times `weight`. As the v1 paper trains its face model from FaceNet's outputs."""

    def __init__(self, teacher: torch.Tensor, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.register_buffer("teacher", F.normalize(teacher.float(), dim=1), persistent=False)

    @classmethod
    def from_file(
        cls, path: str | Path, num_images: int, embedding_dim: int, weight: float = 1.0
    ) -> "DistillationLoss":
        """Read and check the teacher file: one `embedding_dim` row per training image."""
        teacher = read_teacher_embeddings(path)
        if tuple(teacher.shape) != (num_images, embedding_dim):
            raise MbtasksError(
                f"teacher embeddings have shape {tuple(teacher.shape)}, the training set needs "
                f"({num_images}, {embedding_dim}) (one row per training image)",
                path,
            )
        return cls(teacher, weight)

    def forward(self, embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        target = self.teacher[indices]
        return self.weight * (1 - (F.normalize(embeddings, dim=1) * target).sum(dim=1)).mean()
