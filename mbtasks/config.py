"""YAML -> typed config; `--set key=value` overrides; unknown keys are errors."""

import copy
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MbtasksError


def _check(rule: str, test: Callable[[Any], bool]) -> dict:
    """Field metadata: a value that fails `test` is an error "KEY RULE, got VALUE" (None passes where allowed)."""
    return {"rule": rule, "test": test}


def _at_least(low: int) -> dict:
    return _check(f"must be at least {low}", lambda value: value >= low)


def _positive() -> dict:
    return _check("must be above 0", lambda value: value > 0)


def _between(low: float, high: float) -> dict:
    return _check(f"must be between {low} and {high}", lambda value: low <= value <= high)


def _is_size(value: Any) -> bool:
    """None (the model's own), N, or [H, W]: positive integers."""
    if value is None:
        return True
    values = value if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


@dataclass
class ModelConfig:
    """Which network: a name from mbtasks.models.MODELS, its options, and optional weights files."""

    name: str = ""
    options: dict = field(default_factory=dict)
    weights: str | None = None  # an mbtasks weights file of the whole model
    backbone_weights: str | None = None  # an mbtasks weights file whose backbone part is loaded


@dataclass
class DataConfig:
    """Where the data set lives (None: the embedded synthetic set) and how batches are made."""

    root: str | None = None
    format: str = ""  # a data format's name (datasets/formats.py); empty: recognised from root's layout
    synth_dir: str = "data/synth"  # where the embedded set is written when root is None
    synth: dict = field(default_factory=dict)  # options of the synthetic writer (seed, sizes, counts)
    train_split: str = ""  # empty: the format's own name (train2017, train, ...)
    val_split: str = ""
    # input size: int or [h, w]; the model's own when None
    size: Any = field(default=None, metadata=_check("must be a positive integer or [height, width]", _is_size))
    augmentation: str = "default"
    batch_size: int = field(default=32, metadata=_at_least(1))
    val_batch_size: int = field(default=32, metadata=_at_least(1))
    num_workers: int = field(default=2, metadata=_at_least(0))


@dataclass
class TrainConfig:
    """The optimisation recipe and the Lightning trainer's settings."""

    epochs: int = field(default=10, metadata=_at_least(1))
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = field(default=0.1, metadata=_positive())
    momentum: float = field(default=0.9, metadata=_between(0, 1))
    weight_decay: float = field(default=4e-5, metadata=_at_least(0))
    nesterov: bool = False
    warmup_epochs: float = field(default=0.0, metadata=_at_least(0))
    schedule: str = "cosine"  # cosine | poly | step | constant
    poly_power: float = field(default=0.9, metadata=_positive())
    # schedule "step": multiply by lr_gamma every this many epochs
    lr_step_epochs: float = field(default=2.0, metadata=_positive())
    lr_gamma: float = field(default=0.973, metadata=_positive())
    label_smoothing: float = field(default=0.0, metadata=_between(0, 1))
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = field(default=1, metadata=_at_least(1))
    strategy: str = "auto"
    seed: int = field(default=0, metadata=_between(0, 2**32 - 1))  # numpy's seed range
    out_dir: str = "runs/default"
    val_every: int = field(default=1, metadata=_at_least(1))
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    gradient_clip: float | None = field(default=None, metadata=_positive())
    log_every: int = field(default=10, metadata=_at_least(1))
    progress_bar: bool = True
    warmup_factor: float = 0.001  # the warm-up's first learning rate, a factor of train.lr (torchvision's detection)
    sync_batchnorm: bool = False  # batch-norm statistics over all processes (Lightning's SyncBN)
    accumulate_grad_batches: int = 1
    ema_decay: float | None = None  # an exponential moving average of the weights: validated, saved, evaluated
    checkpoint_every_steps: int | None = None  # also write last.ckpt every this many optimiser steps
    keep_every_epochs: int | None = None  # also keep checkpoints/epoch{N}.ckpt every this many epochs
    loggers: list = field(default_factory=lambda: ["csv", "tensorboard"])  # csv, tensorboard, wandb, mlflow


@dataclass
class Config:
    """A whole recipe: task, model, data and training."""

    task: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str, source: str):
    if not isinstance(values, dict):
        raise MbtasksError(f"{where or 'the config'} must be a mapping, got {type(values).__name__}", source)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise MbtasksError(
            f"unknown key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(known)})", source
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{where + '.' if where else ''}{name}"
        sub = known[name].default_factory if dataclasses.is_dataclass(known[name].default_factory) else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value or {}, key, source)
        else:
            kwargs[name] = _typed(value, known[name].type, key, source)
            check = known[name].metadata
            if check and kwargs[name] is not None and not check["test"](kwargs[name]):
                raise MbtasksError(f"{key} {check['rule']}, got {value!r}", source)
    return cls(**kwargs)


def _typed(value: Any, annotation: Any, key: str, source: str) -> Any:
    """The value if it has the field's type (an int where a float is due becomes a float), else an error."""
    allowed = typing.get_args(annotation) or (annotation,)
    if annotation is Any or (value is None and type(None) in allowed):
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    for kind in allowed:
        if isinstance(kind, type) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise MbtasksError(f"{key} must be {names}, got {value!r}", source)


def config_from_dict(values: dict, source: str = "<config>") -> Config:
    """Check and type a nested dict."""
    config = _build(Config, values, "", source)
    if not config.task:
        raise MbtasksError("names no task (set task: in the config or give --task)", source)
    return config


def apply_override(values: dict, assignment: str) -> None:
    """Apply one `key.sub=value` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise MbtasksError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = values
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MbtasksError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), task: str | None = None,
                base: dict | None = None) -> Config:
    """Read a YAML recipe (or start from `base`, or empty), apply `--set` overrides, and type-check the result."""
    values: dict = copy.deepcopy(base) if base else {}
    source = str(path) if path else "<command line>"
    if path is not None:
        if not Path(path).is_file():
            raise MbtasksError("no such config file", path)
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark else ""
            raise MbtasksError(f"{where}not valid YAML ({getattr(error, 'problem', error)})", path) from None
        if not isinstance(values, dict):
            raise MbtasksError("a config must be a YAML mapping", path)
    for assignment in overrides:
        apply_override(values, assignment)
    if task is not None:
        if values.get("task") not in (None, task):
            raise MbtasksError(f"is a {values.get('task')} config, not {task}", source)
        values["task"] = task
    return config_from_dict(values, source)
