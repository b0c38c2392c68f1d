"""build_model(name, **options): every network by name (MODELS), with weights from mbtasks files, records, or
pretrained weights by name (`torchvision:<Enum>.<NAME>`, `timm:<name>`)."""

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from ..backbones import BACKBONES, Backbone
from ..errors import MbtasksError
from ..io.records import Record, load_into
from . import classifiers, detectors, faster_rcnn, segmenters  # noqa: F401  (each registers its networks in MODELS)
from .pretrained import load_weights
from .registry import KINDS, MODELS, ModelEntry, check_num_classes, list_models, register_model

__all__ = [
    "KINDS",
    "MODELS",
    "ModelEntry",
    "build_backbone",
    "build_configured_model",
    "build_from_record",
    "build_model",
    "check_num_classes",
    "find_backbone",
    "list_models",
    "register_model",
    "weights_defaults",
]

# A weights file's options that its backbone needs to give the same outputs: a model built on its backbone takes them
# as defaults (a timm v3 needs batch-norm eps 1e-5, torchvision's 1e-3).
WEIGHTS_BACKBONE_OPTIONS = ("width_mult", "bn_eps")


def build_model(name: str, weights: str | Path | None = None, **options: Any) -> nn.Module:
    """Build a registered network by name, untrained or with weights.

    The networks and their papers are listed by `list_models()` and on the docs' Models page: MobileNet v1
    (Howard et al. 2017, arXiv:1704.04861), v2 (Sandler et al. 2018, arXiv:1801.04381) and v3 (Howard et al. 2019,
    arXiv:1905.02244) classifiers, and the SSD / SSDLite, Faster R-CNN, LR-ASPP and DeepLabv3 networks on them.

    Args:
        name: a registered model name, e.g. `"mobilenet_v3_large"`, `"ssdlite320_mobilenet_v3_large"`.
        weights: a file written by `mbtasks weights import` (or a checkpoint), or pretrained weights by name, e.g.
            `torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1`, `timm:mobilenetv1_100`; None: untrained.
        **options: the builder's options (its docstring lists them), e.g. `width_mult=0.75`, `num_classes=19`;
            over the weights' own options.

    Returns:
        The network (an `nn.Module` in training mode), with the contract of its kind: logits for classifiers,
        torchvision's for detectors and segmenters.

    Raises:
        MbtasksError: an unknown name or option, or weights of another network or that cannot be read.

    Example:
        `model = mbtasks.build_model("mobilenet_v3_small", width_mult=0.75)`
    """
    entry = MODELS.get(name)
    if weights is None:
        return entry.build(**options)
    saved = load_weights(weights)
    if saved.model != name:
        raise MbtasksError(f"holds weights of {saved.model}, not {name}", weights)
    model = entry.build(**{**saved.options, **options})
    load_into(model, saved.state_dict, weights)
    return model


def build_backbone(name: str, weights: str | Path | None = None, **options: Any) -> Backbone:
    """Build a MobileNet backbone alone: the feature extractor the task models stand on.

    Args:
        name: a backbone version, `"mobilenet_v1"`, `"mobilenet_v2"`, `"mobilenet_v3_large"` or
            `"mobilenet_v3_small"`.
        weights: any mbtasks weights file, checkpoint or weights name of a network on that version (its backbone is
            taken, the rest dropped); None: untrained.
        **options: backbone options, e.g. `width_mult`, `output_stride` (8, 16, 32), `reduced_tail`.

    Returns:
        The Backbone: `backbone(images)` gives an OrderedDict of named feature taps (C1..C5, C4_expand), with
        `out_channels` and `strides` of each.

    Raises:
        MbtasksError: an unknown version or option, or weights on another backbone.
    """
    build = BACKBONES.get(name)
    if weights is None:
        return build(**options)
    saved = load_weights(weights)
    if saved.backbone != name:
        raise MbtasksError(f"holds a {saved.backbone} backbone, not {name}", weights)
    # The saved model's backbone options are the defaults, over its builder's own (a v3 SSDLite's reduced tail).
    model_defaults = MODELS.get(saved.model).defaults if saved.model in MODELS else {}
    saved_options = {
        k: v for k, v in {**model_defaults, **saved.options}.items() if k in inspect.signature(build).parameters
    }
    backbone = build(**{**saved_options, **options})
    load_into(backbone, backbone_state(saved.state_dict, weights), weights)
    return backbone


def find_backbone(model: nn.Module) -> Backbone:
    """The MobileNet backbone inside any task model."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise MbtasksError(f"{type(model).__name__} has no MobileNet backbone")


def weights_defaults(weights: str | None, backbone_weights: str | None) -> dict:
    """The backbone options (width, batch-norm eps) of the weights file a model starts from: written into the recipe,
    they let the checkpoint's config rebuild the same network without the file."""
    path = weights or backbone_weights
    if not path:
        return {}
    return {k: v for k, v in load_weights(path).options.items() if k in WEIGHTS_BACKBONE_OPTIONS}


def build_configured_model(
    name: str, options: dict, weights: str | None = None, backbone_weights: str | None = None
) -> nn.Module:
    """A model from a config's model section: whole-model weights, or backbone weights (head left as built)."""
    entry = MODELS.get(name)
    model = build_model(name, weights=weights, **options)
    if backbone_weights:
        saved = load_weights(backbone_weights)
        if saved.backbone != entry.backbone:
            raise MbtasksError(f"holds a {saved.backbone} backbone, not {entry.backbone}", backbone_weights)
        backbone = find_backbone(model)
        # Layers a task model leaves out of its backbone (v2's last 1x1 conv under DeepLab) are not loaded.
        state = {
            k: v for k, v in backbone_state(saved.state_dict, backbone_weights).items() if k in backbone.state_dict()
        }
        load_into(backbone, state, backbone_weights)
    return model


def build_from_record(record: Record, source: str | Path = "<record>") -> nn.Module:
    """The record's network with its weights (as trained; `for_inference` makes the copy evaluate runs)."""
    model = MODELS.get(record.model).build(**record.options)
    load_into(model, record.state_dict, source)
    return model


def backbone_state(state_dict: dict, path: str | Path) -> dict:
    """The backbone's part of any mbtasks model's state dict, found by its stem's key, prefix stripped."""
    stem = "layers.0.0.weight"
    prefixes = [k[: -len(stem)] for k in state_dict if k.endswith(stem)]
    if not prefixes:
        raise MbtasksError("holds no MobileNet backbone weights", path)
    return {k[len(prefixes[0]) :]: v for k, v in state_dict.items() if k.startswith(prefixes[0])}
