"""Image-level heads on the last feature map: the ImageNet classifier of each MobileNet."""
import torch
from torch import nn


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
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.fc(self.dropout(x))
