"""Image-level networks: a MobileNet backbone and a head on its last feature map. Per version, the ImageNet-style
classifier (`mobilenet_v3_large`, ...: torchvision's layer names), the face-attribute network
(`attributes_mobilenet_v1`, ...: one logit per attribute) and the face-embedding network (`embedding_mobilenet_v1`,
...: a unit vector)."""

from collections.abc import Callable

import torch
from torch import nn

from ..backbones import BACKBONES, Backbone
from ..errors import MbtasksError
from ..heads.image import AttributeHead, ClassifierHead, EmbeddingHead
from ..layers.blocks import make_divisible
from .registry import register_model

# v3's hidden classifier layer; like v2's last layer it keeps its width for width < 1 (v3 paper, tables 1 and 2).
CLASSIFIER_HIDDEN = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}
BACKBONE_OPTIONS = ("width_mult", "output_stride", "reduced_tail", "bn_eps")


class ImageClassifier(nn.Module):
    """A backbone and a head on its last feature map."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_last(x))


def reject_unknown(options: dict, name: str) -> None:
    """One error naming the options a builder does not take."""
    if options:
        raise MbtasksError(f"unknown option(s) for {name}: {', '.join(sorted(options))}")


def _backbone(version: str, options: dict) -> Backbone:
    return BACKBONES.get(version)(**{k: options.pop(k) for k in BACKBONE_OPTIONS if k in options})


def _classifier(version: str) -> Callable[..., ImageClassifier]:
    def build(num_classes: int = 1000, dropout: float = 0.2, **options) -> ImageClassifier:
        reduced, width = options.get("reduced_tail"), options.get("width_mult", 1.0)
        backbone = _backbone(version, options)
        reject_unknown(options, version)
        hidden = CLASSIFIER_HIDDEN.get(version)
        if hidden:
            hidden //= 2 if reduced else 1
            hidden = make_divisible(hidden * max(1.0, width))
        return ImageClassifier(backbone, ClassifierHead(backbone.num_features, num_classes, hidden, dropout))

    build.__doc__ = f"{version} ImageNet-style classifier; options num_classes, dropout, {', '.join(BACKBONE_OPTIONS)}"
    return build


def _attributes(version: str) -> Callable[..., ImageClassifier]:
    name = f"attributes_{version}"

    def build(
        num_attributes: int = 40, hidden_channels: int | None = None, dropout: float = 0.0, **options
    ) -> ImageClassifier:
        backbone = _backbone(version, options)
        reject_unknown(options, name)
        return ImageClassifier(backbone, AttributeHead(backbone.num_features, num_attributes, hidden_channels, dropout))

    build.__doc__ = f"{version} with one binary logit per attribute (CelebA's 40 by default)."
    return build


def _embedding(version: str) -> Callable[..., ImageClassifier]:
    name = f"embedding_{version}"

    def build(embedding_dim: int = 128, dropout: float = 0.0, **options) -> ImageClassifier:
        backbone = _backbone(version, options)
        reject_unknown(options, name)
        return ImageClassifier(backbone, EmbeddingHead(backbone.num_features, embedding_dim, dropout))

    build.__doc__ = f"{version} with an L2-normalised embedding (128-d by default; v1 paper, table 14: FaceNet's)."
    return build


for _version in BACKBONES:
    register_model(_version, _version)(_classifier(_version))
    register_model(f"attributes_{_version}", _version)(_attributes(_version))
    register_model(f"embedding_{_version}", _version)(_embedding(_version))
