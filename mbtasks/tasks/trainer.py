"""The Lightning trainer every command runs: checkpoints (last and best), CSV and TensorBoard logs, progress bar."""
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from ..config import Config


def build_trainer(config: Config, monitor: str, for_fit: bool = True) -> pl.Trainer:
    """A Lightning trainer with last + best checkpoints, CSV and TensorBoard logs and a progress bar."""
    train = config.train
    out = Path(train.out_dir)
    callbacks, loggers = [], False
    if for_fit:
        callbacks = [
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="best",
                monitor=monitor,
                mode="max",
                save_last=True,
                auto_insert_metric_name=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ]
        loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tensorboard")]
    extra = {}
    if train.limit_train_batches is not None:
        extra["limit_train_batches"] = train.limit_train_batches
    if train.limit_val_batches is not None:
        extra["limit_val_batches"] = train.limit_val_batches
    return pl.Trainer(
        max_epochs=train.epochs,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        check_val_every_n_epoch=train.val_every,
        gradient_clip_val=train.gradient_clip,
        log_every_n_steps=train.log_every,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=train.progress_bar,
        enable_model_summary=for_fit,
        default_root_dir=out,
        **extra,
    )
