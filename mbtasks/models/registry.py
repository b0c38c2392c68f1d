"""MODELS: every network by the name users know (torchvision's where it exists)."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its builder and the backbone version it stands on (what a backbone-only load checks)."""

    build: Callable[..., nn.Module]
    backbone: str


MODELS: Registry[ModelEntry] = Registry("model")
MODELS.__doc__ = """Networks by name. A registered builder takes keyword options only (unknown ones are an MbtasksError
naming them) and returns an untrained nn.Module holding one MobileNet Backbone: a classifier, attribute or embedding
network (NCHW batch -> logits / unit embeddings), a detector (torchvision's SSD contract) or a segmenter (logits at
the input resolution)."""


def register_model(name: str, backbone: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder as `name`, standing on the `backbone` version; a name registered twice raises."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, ModelEntry(build, backbone))
        return build

    return register
