"""MODELS: every network by the name users know (torchvision's where it exists), each entry carrying its facts."""

import fnmatch
import functools
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..backbones import BACKBONES
from ..errors import MbtasksError
from ..registry import Registry, closest

# The paper of each backbone version, cited by the builders of the models on it.
PAPERS = {
    "mobilenet_v1": "MobileNets (Howard et al. 2017, arXiv:1704.04861)",
    "mobilenet_v2": "MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381)",
    "mobilenet_v3_large": "Searching for MobileNetV3 (Howard et al. 2019, arXiv:1905.02244)",
    "mobilenet_v3_small": "Searching for MobileNetV3 (Howard et al. 2019, arXiv:1905.02244)",
}
# What the backbone's options do, for the Args of every builder that passes them on.
BACKBONE_ARGS = {
    "width_mult": "width multiplier of every layer (the papers' alpha), > 0.",
    "output_stride": "8, 16 or 32: the layers past it are dilated instead of strided.",
    "reduced_tail": "halve the channels after C4, as the v3 paper does for detection and segmentation.",
    "bn_eps": "batch-norm epsilon (torchvision trains v3 with 1e-3, timm with 1e-5).",
}


@dataclass(frozen=True)
class ModelEntry:
    """A registered network and its facts: what other files read instead of its name.

    Args:
        build: its builder (keyword options only; `inspect.signature` shows them with their defaults).
        backbone: the backbone version it stands on (what a backbone-only load checks).
        kind: what it outputs, one of KINDS for the built-in networks (a plugin may add its own).
        size: its default input size, N or (height, width): a detector's own size, 224 for image-level networks,
            520 for segmenters (the size torchvision's segmentation metadata counts at).
        head: its head family ("ssdlite", "ssd", "fasterrcnn", "lraspp", "deeplabv3", "classifier", "attributes",
            "embedding").
    """

    build: Callable[..., nn.Module]
    backbone: str
    kind: str
    size: int | tuple[int, int]
    head: str

    @property
    def defaults(self) -> dict[str, Any]:
        """The builder's options and their defaults, as its signature shows them (e.g. reduced_tail=True for a v3
        SSDLite)."""
        return {
            name: p.default for name, p in inspect.signature(self.build).parameters.items() if p.default is not p.empty
        }


# Kinds of the built-in networks: an ImageNet-style classifier (logits), an attribute network (one binary logit per
# attribute), an embedding network (unit vectors), a detector (torchvision's SSD contract), a segmenter
# (torchvision's contract: {"out": logits at the input resolution, "aux" where it has an aux head}).
KINDS = ("classifier", "attributes", "embedding", "detector", "segmenter")

MODELS: Registry[ModelEntry] = Registry("model", group="mbtasks.models")
MODELS.__doc__ = """Networks by name. A registered object is a ModelEntry, its builder registered where it is defined
with `@register_model(name, backbone=..., kind=..., size=..., head=...)`. The builder takes keyword options only
(unknown ones are an MbtasksError naming them) and returns an untrained nn.Module holding one MobileNet Backbone: a
classifier, attribute or embedding network (NCHW batch -> logits / unit embeddings), a detector (torchvision's SSD
contract) or a segmenter (torchvision's contract: {"out": logits at the input resolution, and "aux" where it has an
aux head}). Third-party packages add models through the entry-point
group `mbtasks.models`: an entry point names a module whose `@register_model` builders register as it is imported
(or one such builder, the entry point named as its model), or a ModelEntry, registered under the entry point's name."""


def reject_unknown(options: dict, builder: Callable, name: str) -> None:
    """One error naming the options that `builder` (of the model `name`) does not take."""
    parameters = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # a builder taking **options checks them itself
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise MbtasksError(
            f"unknown option(s) for {name}: {', '.join(unknown)}"
            f"{closest(unknown[0], list(parameters)) if len(unknown) == 1 else ''}"
        )


def check_num_classes(options: dict, count: int, what: str = "classes") -> None:
    """One error when model.options.num_classes is given and is not the data set's `count` of `what`."""
    given = options.get("num_classes", count)
    if given != count:
        raise MbtasksError(f"model.options.num_classes is {given} but the data set has {count} {what}")


def register_model(
    name: str, *, backbone: str, kind: str, size: int | tuple[int, int], head: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a network builder in MODELS as `name`, with its facts.

    Args:
        name: the model's name, as `build_model` and recipes' `model.name` take it.
        backbone: the backbone version it stands on.
        kind: what it outputs (ModelEntry's `kind`).
        size: its default input size, N or (height, width).
        head: its head family.

    Returns:
        A decorator returning the builder as registered: named `name`, with the builder's signature and docstring,
        rejecting unknown options in one MbtasksError.

    Raises:
        ValueError: a name registered twice (a mistake in code, not a user's).
    """

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(builder)
        def build(**options) -> nn.Module:
            reject_unknown(options, builder, name)
            return builder(**options)

        build.__name__ = build.__qualname__ = name
        MODELS.register(name, ModelEntry(build, backbone, kind, size, head))
        return build

    return register


def model_builder(
    name: str,
    family: Callable[..., nn.Module],
    version: str,
    *args,
    summary: str,
    args_doc: dict[str, str],
    drop: tuple[str, ...] = (),
    **defaults,
) -> Callable[..., nn.Module]:
    """`family(version, *args, **options)` as the builder of the model `name`, its signature the family's keyword
    options and the backbone's (the version's own defaults; `defaults` override, `drop` leaves out) and its docstring
    `summary`, the backbone's paper and Args from `args_doc` and BACKBONE_ARGS."""
    own = [p for p in inspect.signature(family).parameters.values() if p.kind is p.KEYWORD_ONLY]
    passed_on = [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in inspect.signature(BACKBONES.get(version)).parameters.values()
        if p.name not in {q.name for q in own}
    ]
    parameters = [p.replace(default=defaults.get(p.name, p.default)) for p in [*own, *passed_on] if p.name not in drop]
    described = {**BACKBONE_ARGS, **args_doc}

    def build(**options) -> nn.Module:
        return family(version, *args, **{**defaults, **options})

    build.__name__ = build.__qualname__ = name
    build.__module__ = family.__module__
    build.__signature__ = inspect.Signature(parameters, return_annotation=inspect.signature(family).return_annotation)
    documented = [
        textwrap.fill(f"{p.name}: {described[p.name]}", 116, initial_indent="    ", subsequent_indent="        ")
        for p in parameters
    ]
    build.__doc__ = (
        f"{summary}\n\nBackbone: {version}, from {PAPERS[version]}.\n\nArgs:\n" + "\n".join(documented) + "\n"
    )
    return build


def list_models(pattern: str | None = None, kind: str | None = None) -> list[str]:
    """Registered network names in registration order (built-in, then plugins).

    Args:
        pattern: a shell wildcard (`'*ssdlite*'`, as timm's and torchvision's list_models); None: all.
        kind: only networks of this kind (`classifier`, `attributes`, `embedding`, `detector`, `segmenter`, or a
            plugin's); None: all.

    Returns:
        The matching names.

    Raises:
        MbtasksError: an unknown kind (naming the known ones).
    """
    entries = MODELS.items()
    kinds = list(dict.fromkeys(entry.kind for _, entry in entries))
    if kind is not None and kind not in kinds:
        raise MbtasksError(f"unknown model kind {kind!r}{closest(kind, kinds)}; known: {', '.join(kinds)}")
    return [
        name
        for name, entry in entries
        if (pattern is None or fnmatch.fnmatchcase(name, pattern)) and kind in (None, entry.kind)
    ]
