"""Image-level heads on the last feature map: the ImageNet classifier, face attributes and face embeddings."""

import torch
from torch import nn
from torch.nn import functional as F


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by global average pooling."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ClassifierHead(nn.Module):
    """Global average pool, an optional hidden linear layer with h-swish (v3), dropout, then the class logits."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int | None = None, dropout: float = 0.2):
        super().__init__()
        self.hidden = None
        if hidden_channels:
            self.hidden = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.Hardswish(inplace=True))
            in_channels = hidden_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = global_pool(x)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.fc(self.dropout(x))


class AttributeHead(ClassifierHead):
    """One independent binary logit per attribute (sigmoid, not softmax): the classifier's layers, N outputs."""

    def __init__(self, in_channels: int, num_attributes: int, hidden_channels: int | None = None, dropout: float = 0.0):
        super().__init__(in_channels, num_attributes, hidden_channels, dropout)


class EmbeddingHead(nn.Module):
    """Global average pool, dropout, a linear projection to `embedding_dim` with batch norm, then L2 normalisation.

    The batch norm keeps the projection's scale steady for margin losses (as face-recognition heads do); the output
    lies on the unit sphere, so a dot product of two embeddings is their cosine similarity.
    """

    def __init__(self, in_channels: int, embedding_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.fc(self.dropout(global_pool(x)))), dim=1)
