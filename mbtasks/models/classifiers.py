"""Image-level networks: a MobileNet backbone and a head on its last feature map. Per version, the ImageNet-style
classifier (`mobilenet_v3_large`, ...: torchvision's layer names), the face-attribute network
(`attributes_mobilenet_v1`, ...: one logit per attribute) and the face-embedding network (`embedding_mobilenet_v1`,
...: a unit vector)."""

from collections.abc import Callable

import torch
from torch import nn

from ..backbones import BACKBONES, Backbone
from ..heads.image import AttributeHead, ClassifierHead, EmbeddingHead
from ..layers.blocks import make_divisible
from .registry import model_builder, register_model

# v3's hidden classifier layer; like v2's last layer it keeps its width for width < 1 (v3 paper, tables 1 and 2).
CLASSIFIER_HIDDEN = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


class ImageClassifier(nn.Module):
    """A backbone and a head on its last feature map."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_last(x))


def build_classifier(
    version: str,
    *,
    num_classes: int = 1000,
    dropout: float = 0.2,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    **backbone_options,
) -> ImageClassifier:
    """The ImageNet-style classifier on the MobileNet `version`; the options are ARGS' and the backbone's."""
    backbone = BACKBONES.get(version)(width_mult=width_mult, reduced_tail=reduced_tail, **backbone_options)
    hidden = CLASSIFIER_HIDDEN.get(version)
    if hidden:
        hidden //= 2 if reduced_tail else 1
        hidden = make_divisible(hidden * max(1.0, width_mult))
    return ImageClassifier(backbone, ClassifierHead(backbone.num_features, num_classes, hidden, dropout))


def build_attributes(
    version: str,
    *,
    num_attributes: int = 40,
    hidden_channels: int | None = None,
    dropout: float = 0.0,
    **backbone_options,
) -> ImageClassifier:
    """The face-attribute network on the MobileNet `version`; the options are ARGS' and the backbone's."""
    backbone = BACKBONES.get(version)(**backbone_options)
    return ImageClassifier(backbone, AttributeHead(backbone.num_features, num_attributes, hidden_channels, dropout))


def build_embedding(
    version: str, *, embedding_dim: int = 128, dropout: float = 0.0, **backbone_options
) -> ImageClassifier:
    """The face-embedding network on the MobileNet `version`; the options are ARGS' and the backbone's."""
    backbone = BACKBONES.get(version)(**backbone_options)
    return ImageClassifier(backbone, EmbeddingHead(backbone.num_features, embedding_dim, dropout))


ARGS = {
    "num_classes": "classes of the last linear layer (ImageNet's 1000 by default).",
    "dropout": "dropout before the last linear layer.",
    "num_attributes": "binary attributes, one logit each (CelebA's 40 by default).",
    "hidden_channels": "a hidden linear layer with h-swish before the logits (None: none).",
    "embedding_dim": "length of the L2-normalised embedding (128, FaceNet's).",
}
# head family -> (name prefix, family builder, what the docstring says of it)
FAMILIES = {
    "classifier": (
        "",
        build_classifier,
        "The ImageNet classifier of the backbone's paper (torchvision's layer "
        "names; v3's hidden layer keeps 1280 / 1024 channels for width < 1)",
    ),
    "attributes": (
        "attributes_",
        build_attributes,
        "Face attributes, as the MobileNets paper's CelebA network "
        "(arXiv:1704.04861, table 12): one binary logit per attribute",
    ),
    "embedding": (
        "embedding_",
        build_embedding,
        "Face embeddings, as the MobileNets paper's FaceNet distillation "
        "(arXiv:1704.04861, table 14): an L2-normalised vector",
    ),
}
SIZE = 224  # the input size the papers count image-level networks at


def _register(version: str) -> tuple[Callable[..., ImageClassifier], ...]:
    """The classifier, attribute and embedding networks on `version`, registered (each one's kind is its family)."""
    builders = []
    for head, (prefix, build, summary) in FAMILIES.items():
        name = f"{prefix}{version}"
        builder = model_builder(name, build, version, summary=f"{summary}, on {version}.", args_doc=ARGS)
        builders.append(register_model(name, backbone=version, kind=head, size=SIZE, head=head)(builder))
    return tuple(builders)


mobilenet_v1, attributes_mobilenet_v1, embedding_mobilenet_v1 = _register("mobilenet_v1")
mobilenet_v2, attributes_mobilenet_v2, embedding_mobilenet_v2 = _register("mobilenet_v2")
mobilenet_v3_large, attributes_mobilenet_v3_large, embedding_mobilenet_v3_large = _register("mobilenet_v3_large")
mobilenet_v3_small, attributes_mobilenet_v3_small, embedding_mobilenet_v3_small = _register("mobilenet_v3_small")
