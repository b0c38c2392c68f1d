"""`mbtasks.load`: a trained model as torchvision's weights give one, the network (`model`), what a photo goes through
to become its input (`transforms`, torchvision's `weights.transforms()`) and what it is and was trained and measured on
(`meta`, torchvision's `weights.meta`; timm's `pretrained_cfg`)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, config_from_dict
from .datasets.formats import FORMATS
from .datasets.imagefolder import apply_transform
from .errors import MbtasksError
from .info import network_figures
from .io.images import rgb_array
from .io.records import Record
from .models import MODELS
from .models.pretrained import load_weights
from .tasks import TASKS


class Transforms:
    """A photo -> the network's input, exactly as `mbtasks evaluate` and `mbtasks predict` make it (the task's
    `predict_transform`): one image in, a PIL image, an HxWxC array or a CxHxW tensor (uint8, or floats in [0, 1]:
    io.images.rgb_array), one CxHxW float tensor out, as torchvision's `weights.transforms()`. Batches as torchvision's
    models take them: a detector a list, `model([t(a), t(b)])`; the others a stacked batch,
    `model(torch.stack([t(a), t(b)]))` (one image: `model(t(a)[None])`). A JPEG decoded by PIL may differ from
    predict's decoding (OpenCV's) by a grey level; an image array or a PNG gives predict's input exactly."""

    def __init__(self, pipeline: Callable, task: str):
        self.pipeline, self.task = pipeline, task

    def __call__(self, image: Any) -> torch.Tensor:
        return apply_transform(self.pipeline, rgb_array(image))

    def __repr__(self) -> str:
        return f"Transforms(task={self.task!r}, pipeline={self.pipeline!r})"


@dataclass(frozen=True, repr=False)
class Loaded:
    """A trained network (`model`, in eval mode, with the contract of its kind: torchvision's for detectors and
    segmenters), what a photo goes through to become its input (`transforms`) and what it is (`meta`: `load`)."""

    model: nn.Module
    transforms: Transforms
    meta: dict

    def __repr__(self) -> str:
        return f"Loaded({self.meta['model']}, task {self.meta['task']!r}, {len(self.meta['categories'])} categories)"


def load(source: str | Path, task: str | None = None) -> Loaded:
    """A trained model from a training checkpoint (`.ckpt`), an mbtasks weights file, or pretrained weights by name
    (`torchvision:<Enum>.<NAME>`, `timm:<name>`, from torchvision's and timm's caches as `evaluate` reads them).

    Args:
        source: a `.ckpt` file, an mbtasks weights file, or `torchvision:<Enum>.<NAME>` / `timm:<name>`.
        task: a checkpoint's is its own (another is an error); weights without one (imported, or by name) run under
            `task`, by default the one task whose default model is of their network's kind (det for a detector, seg
            for a segmenter), with that task's default recipe.

    Returns:
        A Loaded: `model` (eval mode), `transforms` (a photo -> its input) and `meta`.

    Raises:
        MbtasksError: a file that cannot be read, weights of an unknown network, or a task that does not fit.

    `meta`: task, model, backbone, options, categories (the class names of the data set it was trained on; a COCO
    detector's by label: "N/A" at unused ids) and category_ids, num_params and madds (the network as built, counted
    at input_size: a detector's own size, else the recipe's), metrics (its last validation's figures at training)
    and data (what they were measured on: format, root, None for the embedded set with its `synth` settings, split),
    recipe, and source.
    """
    record = load_weights(source)
    task = _task(record, task, source)
    spec = TASKS.get(task)
    config = None
    if not record.config:  # weights without a recipe: the task's defaults, the weights' network
        config = config_from_dict({"task": task, "model": {"name": record.model, "options": dict(record.options)}})
    module = spec.from_record(record, config, source)
    model = module.model.eval()
    transforms = Transforms(spec.data_module.predict_transform(module.config), task)
    meta = {
        "task": task,
        "model": record.model,
        "backbone": record.backbone,
        "options": dict(record.options),
        "categories": list(record.class_names),
        "category_ids": list(record.category_ids),
        **network_figures(record, model),
        "metrics": dict(record.metrics),
        "data": _measured_on(module.config) if record.config else None,
        "recipe": record.config or None,
        "source": str(source),
    }
    return Loaded(model, transforms, meta)


def _task(record: Record, task: str | None, source: str | Path) -> str:
    """The task a record runs under: its own, else `task`, else the only one whose default model is of its kind."""
    if record.task:
        if task is not None and task != record.task:
            raise MbtasksError(f"is a checkpoint of a {record.task} model, not {task}", source)
        return record.task
    if task is not None:
        TASKS.get(task)  # an unknown task is one line naming the known ones
        return task
    kind = MODELS.get(record.model).kind
    matching = [
        name
        for name, spec in TASKS.items()
        if spec.default_model in MODELS and MODELS.get(spec.default_model).kind == kind
    ]
    if len(matching) != 1:
        raise MbtasksError(
            f"holds weights of {record.model} without a task: give load(..., task=...)"
            + (f" (one of {', '.join(matching)})" if matching else ""),
            source,
        )
    return matching[0]


def _measured_on(config: Config) -> dict:
    """The data a recipe's validation scored: its format, root (None: the embedded set, `synth` its settings) and
    split (the format's validation split where the recipe names none)."""
    data = config.data
    split = data.val_split or (FORMATS[data.format].splits[1] if data.format in FORMATS else "")
    return {
        "format": data.format,
        "root": data.root,
        "synth": data.synth if data.root is None else None,
        "split": split,
    }
