"""Import torchvision / timm state dicts into mbtasks' networks: each source's file read, the options that rebuild
its network found from the tensors, and every tensor mapped by position with its kind and shape checked."""

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MbtasksError
from ..io.records import Record, read_state_dict, save_weights
from .registry import MODELS

KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _classifier_options(bn_eps: float) -> Callable[[dict], dict]:
    def options(state: dict) -> dict:
        return {"bn_eps": bn_eps, "num_classes": int(list(state.values())[-1].shape[0])}

    return options


def _torchvision_ssdlite_options(state: dict) -> dict:
    """torchvision's ssdlite320_mobilenet_v3_large: classes from the first class conv (6 boxes a cell), tail from
    the first extra layer's input (480 reduced: trained from scratch; 960 with an ImageNet backbone)."""
    first_class_conv = state["head.classification_head.module_list.0.1.weight"]
    return {
        "num_classes": int(first_class_conv.shape[0]) // 6,
        "reduced_tail": int(state["backbone.extra.0.0.0.weight"].shape[1]) == 480,
    }


def _torchvision_faster_rcnn_options(state: dict) -> dict:
    """torchvision's fasterrcnn_mobilenet_v3_large(_320)_fpn: classes from the box predictor; its backbone's batch
    norm is torchvision's default (eps 1e-5, FrozenBatchNorm2d's and BatchNorm2d's)."""
    return {"num_classes": int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]), "bn_eps": 1e-5}


def _torchvision_lraspp_options(state: dict) -> dict:
    return {
        "num_classes": int(state["classifier.low_classifier.weight"].shape[0]),
        "channels": int(state["classifier.cbr.0.weight"].shape[0]),
    }


def _torchvision_deeplabv3_options(state: dict) -> dict:
    return {
        "num_classes": int(state["classifier.4.weight"].shape[0]),
        "aux": any(key.startswith("aux_classifier.") for key in state),
    }


# source -> mbtasks model -> the options that rebuild the source's network from its state dict.
# timm trains v3 with batch-norm eps 1e-5 (torchvision: 1e-3); the option keeps its outputs unchanged.
SOURCES: dict[str, dict[str, Callable[[dict], dict]]] = {
    "torchvision": {
        **{
            name: _classifier_options(eps)
            for name, eps in [("mobilenet_v2", 1e-5), ("mobilenet_v3_large", 1e-3), ("mobilenet_v3_small", 1e-3)]
        },
        "ssdlite320_mobilenet_v3_large": _torchvision_ssdlite_options,
        "fasterrcnn_mobilenet_v3_large_fpn": _torchvision_faster_rcnn_options,
        "fasterrcnn_mobilenet_v3_large_320_fpn": _torchvision_faster_rcnn_options,
        "lraspp_mobilenet_v3_large": _torchvision_lraspp_options,
        "deeplabv3_mobilenet_v3_large": _torchvision_deeplabv3_options,
    },
    "timm": {
        name: _classifier_options(1e-5)
        for name in ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
    },
}
# timm's architecture name of each network it imports (`timm:<architecture>.<tag>` names its weights)
TIMM_NETWORKS = {
    "mobilenetv1_100": "mobilenet_v1",
    "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv3_large_100": "mobilenet_v3_large",
    "mobilenetv3_small_100": "mobilenet_v3_small",
}


def map_by_position(source: dict, target, path: str | Path, source_name: str) -> dict:
    """Map a foreign state dict onto `target`'s keys in registration order, checking kind and shape of each.

    torchvision, timm and mbtasks all register layers in forward order, so order is the one mapping that
    holds across their different names; every pair is checked, so a wrong model fails loudly.
    """
    own = target.state_dict()
    if len(source) != len(own):
        raise MbtasksError(
            f"has {len(source)} tensors, {source_name} has {len(own)}: not a {source_name} "
            f"state dict{_first_mismatch(source, own)}",
            path,
        )
    mapped = {}
    for (src_key, value), (key, expected) in zip(source.items(), own.items()):
        same_kind = src_key.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1] or src_key.rsplit(".", 1)[-1] not in KINDS
        if value.shape != expected.shape:
            # timm's v3 head is a 1x1 conv on the pooled map, the same weights as a linear layer.
            if value.numel() == expected.numel() and value.squeeze().shape == expected.squeeze().shape:
                value = value.reshape(expected.shape)
            else:
                same_kind = False
        if not same_kind:
            raise MbtasksError(
                f"does not fit {source_name}: {src_key} {tuple(value.shape)} has no counterpart "
                f"({key} {tuple(expected.shape)})",
                path,
            )
        mapped[key] = value.clone()
    return mapped


def with_batch_counts(state: dict) -> dict:
    """`state` with a zero `num_batches_tracked` after each batch norm's running_var that has none: torchvision's
    detectors trained from ImageNet weights freeze their backbone's batch norm (FrozenBatchNorm2d), which keeps no
    count, where mbtasks' backbone has a BatchNorm2d."""
    counted = {}
    for key, value in state.items():
        counted[key] = value
        counter = key.removesuffix("running_var") + "num_batches_tracked"
        if key.endswith(".running_var") and counter not in state:
            counted[counter] = torch.tensor(0)
    return counted


def _first_mismatch(source: dict, own: dict) -> str:
    for (src_key, value), (key, expected) in zip(source.items(), own.items()):
        if value.shape != expected.shape:
            return f"; first shape that differs: {src_key} {tuple(value.shape)} vs {key} {tuple(expected.shape)}"
    return ""


def convert_state_dict(source: str, state: dict, model: str, src: str | Path) -> Record:
    """A torchvision / timm state dict of `model` as an mbtasks record (`src` names it in errors)."""
    _check_importable(source, model)
    try:
        options = SOURCES[source][model](state)
    except (IndexError, KeyError, AttributeError):
        raise MbtasksError(f"not a {source} {model} state dict", src) from None
    entry = MODELS.get(model)
    mapped = map_by_position(with_batch_counts(state), entry.build(**options), src, model)
    return Record(model, entry.backbone, options, state_dict=mapped)


def import_weights(source: str, src: str | Path, model: str, out: str | Path) -> Record:
    """Convert a torchvision / timm state-dict file into an mbtasks weights file for `model`."""
    _check_importable(source, model)
    record = convert_state_dict(source, read_state_dict(src), model, src)
    save_weights(out, record)
    return record


def _check_importable(source: str, model: str) -> None:
    if source not in SOURCES:
        raise MbtasksError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    if model not in SOURCES[source]:
        raise MbtasksError(f"{source} has no {model} to import; known: {', '.join(SOURCES[source])}")
