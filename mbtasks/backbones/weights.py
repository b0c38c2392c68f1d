"""Import torchvision / timm checkpoints into mbtasks' layout, and read mbtasks weights files."""
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import MbtasksError

FORMAT = "mbtasks.weights/1"


def _classifier_options(bn_eps: float):
    def options(state: dict) -> dict:
        return {"bn_eps": bn_eps, "num_classes": int(list(state.values())[-1].shape[0])}
    return options


# source -> mbtasks model -> the options that rebuild the source's network from its state dict.
# timm trains v3 with batch-norm eps 1e-5 (torchvision: 1e-3); the option keeps its outputs unchanged.
SOURCES: dict[str, dict[str, Callable[[dict], dict]]] = {
    "torchvision": {name: _classifier_options(eps) for name, eps in
                    [("mobilenet_v2", 1e-5), ("mobilenet_v3_large", 1e-3), ("mobilenet_v3_small", 1e-3)]},
    "timm": {name: _classifier_options(1e-5) for name in
             ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]},
}


def register_source(source: str, model: str, options_from_state: Callable[[dict], dict]) -> None:
    """Let `mbtasks weights import --from SOURCE --model MODEL` convert that source's file for a task model."""
    SOURCES.setdefault(source, {})[model] = options_from_state


TIMM_NAMES = {"mobilenet_v1": "mobilenetv1_100", "mobilenet_v2": "mobilenetv2_100",
              "mobilenet_v3_large": "mobilenetv3_large_100", "mobilenet_v3_small": "mobilenetv3_small_100"}
KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class WeightsFile:
    """What an mbtasks weights file holds: the model name, the options that rebuild it, its state dict."""

    model: str
    backbone: str
    options: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict)


def load_file(path: str | Path) -> object:
    """torch.load with weights_only=True, any failure turned into one clear error naming the file."""
    if not Path(path).is_file():
        raise MbtasksError("no such file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean the same to a user
        raise MbtasksError(f"not a PyTorch weights file ({type(error).__name__}: {str(error).splitlines()[0]})",
                           path) from None


def read_state_dict(path: str | Path) -> dict:
    """A plain state dict from a file saved by torch.save (a `state_dict` / `model` wrapper is unwrapped)."""
    data = load_file(path)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MbtasksError("does not hold a state dict of tensors", path)
    return data


def weights_from(data: object, path: str | Path) -> WeightsFile:
    """The weights in a loaded mbtasks weights file or mbtasks training checkpoint."""
    if isinstance(data, dict) and isinstance(data.get("mbtasks"), dict):
        # A Lightning checkpoint of an mbtasks task: the network sits under the task's `model.` prefix.
        record = data["mbtasks"]
        state = {k[len("model."):]: v for k, v in data.get("state_dict", {}).items() if k.startswith("model.")}
        return WeightsFile(record["model"], record["backbone"], dict(record["options"]), state)
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or "state_dict" not in data:
        raise MbtasksError("not an mbtasks weights file (convert it with `mbtasks weights import`)", path)
    return WeightsFile(data["model"], data.get("backbone", data["model"]), dict(data.get("options", {})),
                       data["state_dict"])


def read_weights_file(path: str | Path) -> WeightsFile:
    """Read a file written by `save_weights_file`, or an mbtasks training checkpoint."""
    return weights_from(load_file(path), path)


def save_weights_file(path: str | Path, model: str, backbone: str, options: dict, state_dict: dict) -> None:
    """Write weights with what rebuilds the model."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model": model, "backbone": backbone, "options": options,
                "state_dict": state_dict}, path)


def load_into(module: nn.Module, state_dict: dict, path: str | Path) -> None:
    """load_state_dict with one clear error naming the keys and shapes that do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes file vs model", wrong)):
        if items:
            problems.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})")
    if problems:
        raise MbtasksError("does not fit the model: " + "; ".join(problems), path)
    module.load_state_dict(state_dict)


def map_by_position(source: dict, target: nn.Module, path: str | Path, source_name: str) -> dict:
    """Map a foreign state dict onto `target`'s keys in registration order, checking kind and shape of each.

    torchvision, timm and mbtasks all register layers in forward order, so order is the one mapping that
    holds across their different names; every pair is checked, so a wrong model fails loudly.
    """
    own = target.state_dict()
    if len(source) != len(own):
        raise MbtasksError(f"has {len(source)} tensors, {source_name} has {len(own)}: not a {source_name} "
                           f"state dict{_first_mismatch(source, own)}", path)
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
            raise MbtasksError(f"does not fit {source_name}: {src_key} {tuple(value.shape)} has no counterpart "
                               f"({key} {tuple(expected.shape)})", path)
        mapped[key] = value.clone()
    return mapped


def _first_mismatch(source: dict, own: dict) -> str:
    for (src_key, value), (key, expected) in zip(source.items(), own.items()):
        if value.shape != expected.shape:
            return f"; first shape that differs: {src_key} {tuple(value.shape)} vs {key} {tuple(expected.shape)}"
    return ""


def import_weights(source: str, src: str | Path, model: str, out: str | Path) -> WeightsFile:
    """Convert a torchvision / timm state-dict file into an mbtasks weights file for `model`."""
    from ..models import MODEL_BACKBONES, MODELS

    if source not in SOURCES:
        raise MbtasksError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    if model not in SOURCES[source]:
        raise MbtasksError(f"{source} has no {model} to import; known: {', '.join(SOURCES[source])}")
    state = read_state_dict(src)
    try:
        options = SOURCES[source][model](state)
    except (IndexError, KeyError, AttributeError):
        raise MbtasksError(f"not a {source} {model} state dict", src) from None
    target = MODELS[model](**options)
    mapped = map_by_position(state, target, src, model)
    saved = WeightsFile(model, MODEL_BACKBONES.get(model, model), options, mapped)
    save_weights_file(out, saved.model, saved.backbone, saved.options, saved.state_dict)
    return saved
