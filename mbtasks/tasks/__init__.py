"""The tasks: each `tasks/<task>.py` holds a BaseDataModule and a BaseTask that registers itself in TASKS with its
facts. Adding a task is that one file (here or in a plugin package, through the `mbtasks.tasks` entry-point group),
with its data reader under datasets/ and its evaluator under evaluation/."""

# Each registers itself, in this order (the order of `mbtasks --help` and of the tables).
from . import detection, segmentation, attributes, embeddings, classification  # noqa: F401, I001
from .base import BaseDataModule, BaseTask
from .registry import TASKS

__all__ = ["TASKS", "BaseDataModule", "BaseTask"]
