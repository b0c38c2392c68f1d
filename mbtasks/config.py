"""Recipes (YAML, by file or packaged name, with their bases: recipe_files.py) -> typed config; several recipes merged
in order, `--set key=value` overrides on top; unknown keys and values out of their allowed set or range are errors
when the recipe is loaded (with the closest valid name for a typo), before anything is written."""

import copy
import dataclasses
import difflib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MbtasksError
from .recipe_files import merged, read_recipe

# The allowed names, defined here once: the trainer and the optimiser read them from here.
SCHEDULES = ("cosine", "poly", "step", "multistep", "constant")
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
# train.loggers name -> (Lightning logger class in pytorch_lightning.loggers, the package it needs)
LOGGERS = {
    "csv": ("CSVLogger", None),
    "tensorboard": ("TensorBoardLogger", "tensorboard"),
    "wandb": ("WandbLogger", "wandb"),
    "mlflow": ("MLFlowLogger", "mlflow"),
}
# Lightning's own sets, written out so that loading a recipe needs no torch (seconds of imports); a test keeps them
# equal to the installed Lightning's (precision: its _PRECISION_INPUT; accelerators and strategies: its registries).
PRECISIONS = (
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
    32,
    16,
    64,
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true",
    "ddp_notebook_find_unused_parameters_false",
    "ddp_notebook_find_unused_parameters_true",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme",
    "fsdp",
    "fsdp_cpu_offload",
    "single_device",
    "single_xla",
    "xla_debug",
    "xla",
    "single_tpu",
)


def _check(rule: str, test: Callable[[Any], bool], names: tuple = ()) -> dict:
    """Field metadata: a value that fails `test` is an error "KEY RULE, got VALUE" (None passes where allowed), with
    the closest of `names` to a mistyped name."""
    return {"rule": rule, "test": test, "names": names}


def _at_least(low: int) -> dict:
    return _check(f"must be at least {low}", lambda value: value >= low)


def _positive() -> dict:
    return _check("must be above 0", lambda value: value > 0)


def _between(low: float, high: float) -> dict:
    return _check(f"must be between {low} and {high}", lambda value: low <= value <= high)


def _one_of(*names, listed: str | None = None) -> dict:
    """The value is one of `names`; the message lists `listed`, else every name (32 and "32" once)."""
    listed = listed or ", ".join(dict.fromkeys(str(name) for name in names))
    return _check(f"must be one of {listed}", lambda value: value in names, names)


def _each_of(*names) -> dict:
    """A list of `names`, each at most once."""
    return _check(
        f"must be a list of {', '.join(names)} (each at most once)",
        lambda value: all(isinstance(v, str) and v in names for v in value) and len(set(value)) == len(value),
        names,
    )


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_size(value: Any) -> bool:
    """None (the model's own), N, or [H, W]: positive integers."""
    if value is None:
        return True
    values = value if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    return all(_is_count(v, 1) for v in values)


def _is_devices(value: Any) -> bool:
    """As Lightning's Trainer(devices=...) takes them: "auto", a count (-1: every device), a list of device indices,
    or those written as a string ("2", "-1", "0,1")."""
    if isinstance(value, str):
        text = value.strip()
        if text in ("auto", "-1"):
            return True
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            return False
        value = [int(part) for part in parts] if "," in text else int(parts[0])
    if isinstance(value, list):
        return bool(value) and all(_is_count(v, 0) for v in value) and len(set(value)) == len(value)
    return _is_count(value, 1) or _is_count(value, -1) and value == -1


def _batch_limit() -> dict:
    """Lightning's limit_*_batches: a number of batches, or a fraction of them."""
    return _check(
        "must be a number of batches (0 or more) or a fraction of them from 0.0 to 1.0",
        lambda value: _is_count(value, 0) or isinstance(value, float) and 0 <= value <= 1,
    )


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
    # the most pixels an image read may have, checked from its header before decoding (decompression bombs)
    max_pixels: int = field(default=100_000_000, metadata=_at_least(1))


@dataclass
class TrainConfig:
    """The optimisation recipe and the Lightning trainer's settings."""

    epochs: int = field(default=10, metadata=_at_least(1))
    optimizer: str = field(default="sgd", metadata=_one_of(*OPTIMIZERS))
    lr: float = field(default=0.1, metadata=_positive())
    momentum: float = field(default=0.9, metadata=_between(0, 1))
    weight_decay: float = field(default=4e-5, metadata=_at_least(0))
    nesterov: bool = False  # SGD's Nesterov momentum (needs train.momentum above 0)
    warmup_epochs: float = field(default=0.0, metadata=_at_least(0))
    schedule: str = field(default="cosine", metadata=_one_of(*SCHEDULES))
    poly_power: float = field(default=0.9, metadata=_positive())
    # schedule "step": multiply by lr_gamma every this many epochs
    lr_step_epochs: float = field(default=2.0, metadata=_positive())
    lr_gamma: float = field(default=0.973, metadata=_positive())
    # schedule "multistep": multiply by lr_gamma at each of these epochs (torchvision's detection: 16, 22 of 26)
    lr_milestones: list = field(
        default_factory=list,
        metadata=_check(
            "must be a list of increasing epochs above 0",
            lambda value: (
                isinstance(value, list)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
                and value == sorted(set(value))
            ),
        ),
    )
    label_smoothing: float = field(default=0.0, metadata=_between(0, 1))
    precision: str | int = field(default="32-true", metadata=_one_of(*PRECISIONS))
    accelerator: str = field(default="auto", metadata=_one_of(*ACCELERATORS))
    devices: Any = field(
        default=1,
        metadata=_check("must be auto, a number of devices (-1: all of them) or a list of device indices", _is_devices),
    )
    num_nodes: int = field(default=1, metadata=_at_least(1))
    # the message lists the strategies, not each variant of them (ddp_fork, deepspeed_stage_2, ...)
    strategy: str = field(
        default="auto",
        metadata=_one_of(
            *STRATEGIES, listed=", ".join([*(name for name in STRATEGIES if "_" not in name), "ddp_spawn", "..."])
        ),
    )
    seed: int = field(default=0, metadata=_between(0, 2**32 - 1))  # numpy's seed range
    out_dir: str = "runs/default"
    val_every: int = field(default=1, metadata=_at_least(1))
    limit_train_batches: Any = field(default=None, metadata=_batch_limit())
    limit_val_batches: Any = field(default=None, metadata=_batch_limit())
    gradient_clip: float | None = field(default=None, metadata=_positive())
    # a training loss above this stops the run as diverged, as a loss or weights that are not finite always do
    max_loss: float | None = field(default=None, metadata=_positive())
    log_every: int = field(default=10, metadata=_at_least(1))
    progress_bar: bool = True
    # the warm-up's first learning rate, a factor of train.lr (torchvision's detection); torch's LinearLR takes (0, 1]
    warmup_factor: float = field(
        default=0.001, metadata=_check("must be above 0 and at most 1", lambda value: 0 < value <= 1)
    )
    sync_batchnorm: bool = False  # batch-norm statistics over all processes (Lightning's SyncBN)
    accumulate_grad_batches: int = field(default=1, metadata=_at_least(1))
    # an exponential moving average of the weights: validated, saved, evaluated
    ema_decay: float | None = field(
        default=None, metadata=_check("must be between 0 and 1 (exclusive)", lambda value: 0 < value < 1)
    )
    # also write last.ckpt every this many optimiser steps
    checkpoint_every_steps: int | None = field(default=None, metadata=_at_least(1))
    # also keep checkpoints/epoch{N}.ckpt every this many epochs
    keep_every_epochs: int | None = field(default=None, metadata=_at_least(1))
    loggers: list = field(default_factory=lambda: ["csv", "tensorboard"], metadata=_each_of(*LOGGERS))
    # every this many validations, `log_images` fixed validation images with their ground truth and the model's
    # answer drawn, to the loggers that take images (tensorboard, wandb, mlflow); null: never
    log_images_every: int | None = field(default=None, metadata=_at_least(1))
    log_images: int = field(default=4, metadata=_at_least(1))


@dataclass
class Config:
    """A whole recipe: task, model, data and training."""

    task: str = ""
    description: str = ""  # one line: what the recipe reproduces (`mbtasks recipes` lists it)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str, source: str):
    if not isinstance(values, dict):
        raise MbtasksError(f"{where or 'the config'} must be a mapping, got {type(values).__name__}", source)
    prefix = f"{where}." if where else ""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(known)}"
        raise MbtasksError(f"unknown key {prefix}{unknown[0]} ({hint})", source)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        sub = known[name].default_factory if dataclasses.is_dataclass(known[name].default_factory) else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value or {}, key, source)
        else:
            kwargs[name] = _typed(value, known[name].type, key, source)
            check = known[name].metadata
            if check and kwargs[name] is not None and not check["test"](kwargs[name]):
                raise MbtasksError(
                    f"{key} {check['rule']}, got {value!r}{_did_you_mean(value, check['names'])}", source
                )
    return cls(**kwargs)


def _did_you_mean(value: Any, names: tuple) -> str:
    """ " (did you mean 'cosine'?)" for a mistyped name (or the first one in a list) close to one of `names`."""
    by_lower = {}  # "SGD" is a typo of sgd too; of "32" and 32, the first named
    for name in names:
        by_lower.setdefault(str(name).lower(), name)
    for word in value if isinstance(value, list) else [value]:
        if isinstance(word, str) and word not in names:
            close = difflib.get_close_matches(word.lower(), by_lower, n=1)
            return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
    return ""


def _check_together(config: Config, source: str) -> None:
    """The rules that tie two settings."""
    train = config.train
    if train.optimizer == "sgd" and train.nesterov and train.momentum <= 0:
        # torch's SGD refuses it, but only when training starts, after the output folder is made.
        raise MbtasksError(
            f"train.nesterov needs train.momentum above 0 (Nesterov momentum), got momentum {train.momentum}", source
        )


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
    _check_together(config, source)
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


Recipes = str | Path | Sequence[str | Path] | None


def load_config(
    path_or_name: Recipes, overrides: Sequence[str] = (), task: str | None = None, base: dict | None = None
) -> Config:
    """The typed recipe: `base` (a dict, e.g. a checkpoint's recipe) under the recipe files or packaged names given
    (one, or several merged in order, the later over the earlier), then the `--set` overrides, then `task`'s check."""
    recipes = [] if path_or_name is None else [path_or_name] if isinstance(path_or_name, (str, Path)) else path_or_name
    values: dict = copy.deepcopy(base) if base else {}
    for recipe in recipes:
        values = merged(values, read_recipe(recipe))
    source = " + ".join(str(recipe) for recipe in recipes) or "<command line>"
    for assignment in overrides:
        apply_override(values, assignment)
    if task is not None:
        if values.get("task") not in (None, task):
            raise MbtasksError(f"is a {values.get('task')} config, not {task}", source)
        values["task"] = task
    return config_from_dict(values, source)


def config_yaml(config: Config) -> str:
    """The resolved recipe as YAML, every key written out: load_config of it gives the same Config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, width=10_000)
