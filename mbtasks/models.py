"""build_model(name, **options): the model names users know, torchvision's where they exist."""
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .backbones import BACKBONES, Backbone
from .backbones.blocks import make_divisible
from .errors import MbtasksError
from .heads.image import ClassifierHead

# v3's hidden classifier layer; like v2's last layer it keeps its width for width < 1 (the v2 paper's rule).
CLASSIFIER_HIDDEN = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


class ImageClassifier(nn.Module):
    """A backbone and a classifier head on its last feature map."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_last(x))


BACKBONE_OPTIONS = ("width_mult", "output_stride", "reduced_tail", "bn_eps")


def _backbone_options(options: dict) -> dict:
    return {k: options.pop(k) for k in BACKBONE_OPTIONS if k in options}


def _classifier_builder(version: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, dropout: float = 0.2, **options) -> ImageClassifier:
        backbone_options = _backbone_options(options)
        _reject_unknown(options, version)
        backbone = BACKBONES[version](**backbone_options)
        hidden = CLASSIFIER_HIDDEN.get(version)
        if hidden:
            hidden //= 2 if backbone_options.get("reduced_tail") else 1
            hidden = make_divisible(hidden * max(1.0, backbone_options.get("width_mult", 1.0)))
        return ImageClassifier(backbone, ClassifierHead(backbone.num_features, num_classes, hidden, dropout))

    build.__doc__ = f"{version} ImageNet-style classifier."
    return build


def _reject_unknown(options: dict, name: str) -> None:
    if options:
        raise MbtasksError(f"unknown option(s) for {name}: {', '.join(sorted(options))}")


MODELS: dict[str, Callable[..., nn.Module]] = {name: _classifier_builder(name) for name in BACKBONES}
# Task models: name -> the backbone version they stand on (what a backbone-only load checks).
MODEL_BACKBONES: dict[str, str] = {name: name for name in BACKBONES}
from .detectors import DETECTOR_BACKBONES, DETECTORS  # noqa: E402  (imports backbones only, never models)
MODELS.update(DETECTORS)
MODEL_BACKBONES.update(DETECTOR_BACKBONES)
from .segmenters import SEGMENTER_BACKBONES, SEGMENTERS  # noqa: E402 (segmenters never imports models)
MODELS.update(SEGMENTERS)
MODEL_BACKBONES.update(SEGMENTER_BACKBONES)


def _check_name(name: str, known: dict, kind: str) -> None:
    if name not in known:
        raise MbtasksError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


def build_model(name: str, weights: str | Path | None = None, **options) -> nn.Module:
    """Build a model by name; `weights` is a file written by `mbtasks weights import` (or a checkpoint)."""
    from .backbones.weights import load_into, read_weights_file

    _check_name(name, MODELS, "model")
    if weights is None:
        return MODELS[name](**options)
    saved = read_weights_file(weights)
    if saved.model != name:
        raise MbtasksError(f"holds weights of {saved.model}, not {name}", weights)
    model = MODELS[name](**{**saved.options, **options})
    load_into(model, saved.state_dict, weights)
    return model


def build_backbone(name: str, weights: str | Path | None = None, **options) -> Backbone:
    """Build a backbone alone; `weights` may be any mbtasks weights file or checkpoint on that version."""
    from .backbones.weights import load_into, read_weights_file

    _check_name(name, BACKBONES, "backbone")
    if weights is None:
        return BACKBONES[name](**options)
    saved = read_weights_file(weights)
    if saved.backbone != name:
        raise MbtasksError(f"holds a {saved.backbone} backbone, not {name}", weights)
    # The saved model's backbone options (width, tail, eps) are the defaults; a detector's own defaults are not
    # recorded, so e.g. a v3 SSDLite backbone needs reduced_tail=True.
    saved_options = {k: v for k, v in saved.options.items() if k in BACKBONE_OPTIONS}
    backbone = BACKBONES[name](**{**saved_options, **options})
    load_into(backbone, backbone_state(saved.state_dict, weights), weights)
    return backbone


def find_backbone(model: nn.Module) -> Backbone:
    """The MobileNet backbone inside any task model."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise MbtasksError(f"{type(model).__name__} has no MobileNet backbone")


def build_configured_model(name: str, options: dict, weights: str | None = None,
                           backbone_weights: str | None = None) -> nn.Module:
    """A model from a config's model section: whole-model weights, or backbone weights (head left as built)."""
    from .backbones.weights import load_into, read_weights_file

    _check_name(name, MODELS, "model")
    model = build_model(name, weights=weights, **options)
    if backbone_weights:
        saved = read_weights_file(backbone_weights)
        version = MODEL_BACKBONES[name]
        if saved.backbone != version:
            raise MbtasksError(f"holds a {saved.backbone} backbone, not {version}", backbone_weights)
        backbone = find_backbone(model)
        # Layers a task model leaves out of its backbone (v2's last 1x1 conv under DeepLab) are not loaded.
        state = {k: v for k, v in backbone_state(saved.state_dict, backbone_weights).items()
                 if k in backbone.state_dict()}
        load_into(backbone, state, backbone_weights)
    return model


def backbone_state(state_dict: dict, path: str | Path) -> dict:
    """The backbone's part of any mbtasks model's state dict, found by its stem's key, prefix stripped."""
    stem = "layers.0.0.weight"
    prefixes = [k[: -len(stem)] for k in state_dict if k.endswith(stem)]
    if not prefixes:
        raise MbtasksError("holds no MobileNet backbone weights", path)
    return {k[len(prefixes[0]):]: v for k, v in state_dict.items() if k.startswith(prefixes[0])}
