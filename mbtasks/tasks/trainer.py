"""The Lightning trainer every command runs: checkpoints (last and best), CSV and TensorBoard logs, progress bar."""
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from ..config import Config
from ..errors import MbtasksError
from ..io.outputs import output_folder


def claim_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """The training output folder, created; one that holds checkpoints of an earlier run is refused unless the run is
    resumed, or `overwrite` asks to remove those checkpoints (else Lightning would write best-v1.ckpt beside
    best.ckpt, and `evaluate OUT/checkpoints/best.ckpt` would score the old model)."""
    out = output_folder(out_dir)
    earlier = sorted((out / "checkpoints").glob("*.ckpt"))
    if earlier and not resume:
        if not overwrite:
            raise MbtasksError(f"holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}): pass "
                               f"--resume {out / 'checkpoints' / 'last.ckpt'} to continue it, --overwrite to replace "
                               "it, or set train.out_dir to a new folder", out)
        for checkpoint in earlier:
            checkpoint.unlink(missing_ok=True)  # DDP processes each run this: another may have removed it
    return out


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
    try:
        trainer = pl.Trainer(
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
    except (MisconfigurationException, ValueError, TypeError) as error:
        # Lightning checks these settings itself (devices, strategy, precision, ...): its refusal is the user's mistake.
        message = " ".join(str(error).split())
        raise MbtasksError(f"Lightning refuses the train settings: {message}") from None
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > (os.cpu_count() or 1):
        # Lightning would start them all, one process per device: past the core count that only thrashes the machine.
        raise MbtasksError(f"train.devices={train.devices} on the CPU starts {trainer.num_devices} processes on this "
                           f"machine, which has {os.cpu_count()} CPUs")
    return trainer
