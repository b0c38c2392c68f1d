"""A recipe's LightningModule and LightningDataModule, ready for a Lightning trainer: what `mbtasks train` trains and
`mbtasks.from_recipe` gives a user's own `pl.Trainer`."""

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from ..config import Config, load_config
from .base import BaseDataModule, BaseTask
from .registry import TASKS


def build_task_and_data(config: Config, stage: str = "fit") -> tuple[BaseTask, BaseDataModule]:
    """The task's module and data module of a recipe: the data read for `stage` (the embedded set written on first
    use), the network built for its classes. Seeded with train.seed first, so the network starts the same each time."""
    spec = TASKS.get(config.task)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    data = spec.data_module(config)
    data.prepare_data()
    data.setup(stage)
    data.check_files()  # before any output is written
    return spec(data.config, data.class_names, data.category_ids), data


def from_recipe(recipe: str | Path, **overrides: Any) -> tuple[BaseTask, BaseDataModule]:
    """The LightningModule and LightningDataModule of a recipe, for `pl.Trainer(...).fit(task, datamodule=data)`.

    Args:
        recipe: a YAML recipe file (or a recipe's name, where mbtasks.config.load_config knows it).
        **overrides: values that replace the recipe's, per section, as `--set` does: `data={"batch_size": 8}`,
            `train={"epochs": 1}`, `model={"options": {"width_mult": 0.5}}` (nested dicts go key by key).

    Returns:
        The task's LightningModule (its network built for the data's classes) and its LightningDataModule, set up.

    Raises:
        MbtasksError: an unknown recipe, key or value, or data that cannot be read.

    Example:
        `task, data = mbtasks.from_recipe("det_shapes", data={"batch_size": 8})`
    """
    config = load_config(recipe, recipe_assignments(overrides))
    return build_task_and_data(config)


def recipe_assignments(overrides: dict, prefix: str = "") -> list[str]:
    """Nested overrides as `--set` assignments (`data.batch_size=8`), values written as YAML; an empty dict replaces
    its key's value."""
    assignments = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            assignments += recipe_assignments(value, f"{name}.")
            continue
        value = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
        assignments.append(f"{name}={text.removesuffix('...').strip()}")
    return assignments
