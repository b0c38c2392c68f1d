"""Pictures of a few fixed validation images, their ground truth beside the model's answer, logged every K
validations to the loggers that take images (TensorBoard, wandb, mlflow): a wrong label map or a model that learns
nothing shows in the first epochs, not when the metric is bad days later."""

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

from ..drawing import grid
from ..errors import MbtasksError
from .base import BaseTask

TAG = "val_images"


class ValidationImages(Callback):
    """After every `every`-th validation of a fit (not the sanity check), the first `count` validation images drawn
    twice by the task (`draw_sample`: the ground truth; `draw_answer`: the model's answer, as predict draws it) side by
    side, logged under val_images/N at the global step."""

    def __init__(self, every: int, count: int):
        self.every, self.count = every, count

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and type(pl_module).draw_answer is BaseTask.draw_answer:
            raise MbtasksError(
                f"train.log_images_every is set, but the {pl_module.task} task draws no pictures: set it to null"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        validation = (trainer.current_epoch + 1) // (trainer.check_val_every_n_epoch or 1)
        if trainer.sanity_checking or not trainer.is_global_zero or validation % self.every:
            return
        loggers = [logger for logger in trainer.loggers if takes_images(logger)]
        if not loggers:
            return
        for number, picture in enumerate(self.pictures(trainer.datamodule, pl_module)):
            for logger in loggers:
                log_image(logger, f"{TAG}/{number}", picture, trainer.global_step)

    def pictures(self, data: pl.LightningDataModule, task: BaseTask) -> list[np.ndarray]:
        """Each of the first validation images: its ground truth and the model's answer, side by side."""
        pictures = []
        for index in range(min(self.count, len(data.val_set))):
            item = data.val_set[index]
            image = type(data).graph_input(item)
            with torch.no_grad():  # in the model's floating type (float64 under train.precision: 64-true)
                answer = task.predict_inputs([image.to(task.dtype) if image.is_floating_point() else image])[0]
            photo, target = data.sample_for_drawing(item)
            pictures.append(grid([task.draw_sample(photo, target), task.draw_answer(photo, answer)], columns=2))
        return pictures


def takes_images(logger) -> bool:
    """Whether the logger records images: TensorBoard's and MLflow's through their experiment, others (wandb)
    through their own log_image."""
    return isinstance(logger, (TensorBoardLogger, MLFlowLogger)) or hasattr(logger, "log_image")


def log_image(logger, tag: str, picture: np.ndarray, step: int) -> None:
    """One HxWx3 uint8 picture to one logger."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, picture, step, dataformats="HWC")
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, picture, f"{tag}/step_{step:08d}.png")
    else:
        logger.log_image(key=tag, images=[picture], step=step)
