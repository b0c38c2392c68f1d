"""TASKS: what `mbtasks train/evaluate/predict/export/ablate --task NAME` runs."""

from ..registry import Registry

TASKS = Registry("task", group="mbtasks.tasks", name_attribute="task")
TASKS.__doc__ = """Tasks by name. A registered object is a BaseTask subclass (a LightningModule) registered where it
is defined, `@TASKS.register("det")`, which sets its `task` to the name. Its class attributes are its facts (its
`data_module`, the monitored metric, default model, demo recipe, headline metrics, profile class count, exported
graph outputs) and its hooks say how it is exported, run in ONNX Runtime and ablated: no other file names a task.
Third-party packages add tasks through the entry-point group `mbtasks.tasks`."""
