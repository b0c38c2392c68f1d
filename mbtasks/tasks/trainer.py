"""The Lightning trainer every command runs: checkpoints (last, best, every K epochs or steps, written atomically),
the loggers named in the recipe (and validation images drawn for them), EMA of the weights, SyncBN, precision and
gradient accumulation."""

import contextlib
import importlib
import math
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins import LayerSync, TorchSyncBatchNorm
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .. import interruption
from ..config import LOGGERS, Config, TrainConfig
from ..errors import MbtasksError
from ..interruption import Interrupted
from ..io.outputs import output_folder
from ..io.records import non_finite_tensors, write_torch_file
from ..io.run_lock import run_lock
from ..layers.sync_batchnorm import convert_batchnorm
from .validation_images import ValidationImages


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed, so a kill mid-write never leaves last.ckpt unloadable;
    read back with weights_only=True (a checkpoint holds tensors and plain data only)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        if bad := non_finite_tensors(checkpoint.get("state_dict", {})):  # StopOnDivergence stops runs before this
            raise MbtasksError(f"not written: {len(bad)} tensors of the weights are not finite, first {bad[0]}", path)
        output_folder(path.parent)
        write_torch_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class AllReduceSyncBatchNorm(LayerSync):
    """Lightning's sync_batchnorm on any accelerator: batch norm over all processes' batches (CPU processes too)."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return convert_batchnorm(model)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return convert_batchnorm(model, to_sync=False)


class RandomState(Callback):
    """Saves the random generators' states with each checkpoint and restores them when training resumes (when
    training starts, after the sanity check), so dropout continues as in an uninterrupted run."""

    def __init__(self):
        self._restore: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        generator, keys, position, has_gauss, gauss = np.random.get_state()
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._restore = checkpoint.get("random_state")

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restore is None:
            return
        torch.set_rng_state(self._restore["torch"])
        version, state, internal = self._restore["python"]
        random.setstate((version, tuple(state), internal))
        generator, keys, position, has_gauss, gauss = self._restore["numpy"]
        np.random.set_state((generator, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        self._restore = None


class StopOnSignal(Callback):
    """SIGTERM or SIGINT while training: the run stops after the step at hand (Lightning's handling of SIGTERM, whose
    flag its loops check between steps, and in step with every process; SIGINT is made to raise the same flag) and
    saves `checkpoint`, from which --resume continues as if the run had never stopped (the training loader takes up
    the epoch where it stopped: samplers.ResumableLoader); a second signal stops it at once. A signal during the
    validation of a fit lets that validation end first (Lightning would stop it midway), so that the epoch's figures
    and its best.ckpt update are not lost.

    Under SLURM with Lightning's auto-requeue (its SLURMEnvironment), the requeue signal (SIGUSR1, which SLURM sends
    before the time limit) stops the run in the same way, and Lightning's own requeue handler then saves its HPC
    checkpoint (OUT/hpc_ckpt_N.ckpt) and calls `scontrol requeue`: the requeued job resumes from it
    (requeued_checkpoint).
    Lightning would run that handler as the signal arrives, wherever the step is; a checkpoint taken between steps is
    the one an exact resume needs, so this callback holds the signal (Lightning installs its handler only where the
    signal has none) and runs Lightning's handler after the step."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self.signum: int | None = None
        self.saved = False
        self.held = False  # a signal held back until the validation under way ends
        self.requeue_signal: int | None = None
        self.requeued: str | None = None  # the HPC checkpoint saved before the job was requeued
        self._handler_before = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        interruption.graceful = lambda signum: self._stop_after_step(trainer, signum)
        environment = trainer._accelerator_connector.cluster_environment
        on_slurm = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if stage == "fit" and on_slurm and threading.current_thread() is threading.main_thread():
            self.requeue_signal = environment.requeue_signal
            self._handler_before = signal.signal(
                self.requeue_signal, lambda signum, frame: interruption.graceful(signum)
            )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        interruption.graceful = None
        if self._handler_before is not None:
            signal.signal(self.requeue_signal, self._handler_before)
            self._handler_before = None

    def _stop_after_step(self, trainer: pl.Trainer, signum: int) -> None:
        if self.signum is not None:
            interruption.graceful = None
            raise Interrupted(signum)
        self.signum = signum
        # Lightning's own flag (its handler, run before this one, has set it for SIGTERM); held back while a fit's
        # validation runs, which Lightning would stop midway
        validating = trainer.validating and trainer.state.fn == "fit"
        trainer._signal_connector.received_sigterm, self.held = not validating, validating

    def on_validation_batch_end(self, trainer, *args) -> None:
        # Lightning checks its flag after this hook and stops validation midway: held back here as well, where
        # Lightning's handler ran after this callback's
        signals = trainer._signal_connector
        if signals.received_sigterm and not trainer.sanity_checking and trainer.state.fn == "fit":
            signals.received_sigterm, self.held = False, True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.held:  # the loops stop at their next check (the run's checkpoint callbacks save first)
            trainer._signal_connector.received_sigterm, self.held = True, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if job := slurm_job_id():
            checkpoint["slurm_job"] = job  # whose HPC checkpoint it is: requeued_checkpoint

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        if self.signum is not None and self.signum == self.requeue_signal:
            self.requeued = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            trainer._signal_connector._slurm_sigusr_handler_fn(self.signum, None)  # saves there; scontrol requeue
        else:
            trainer.save_checkpoint(self.checkpoint)
        self.saved = True

    def stopped(self, trainer: pl.Trainer) -> Interrupted:
        """The one line of a run stopped by its signal: where it stopped, its checkpoint, how to go on."""
        signum = self.signum or signal.SIGTERM
        where = f"after step {trainer.global_step} (epoch {trainer.current_epoch})"
        if not self.saved:
            return Interrupted(signum, f"stopped by {signal.Signals(signum).name} {where}, before training began")
        if self.requeued is not None:
            return Interrupted(
                signum,
                f"stopped by {signal.Signals(signum).name} {where}; saved {self.requeued} and requeued SLURM job "
                f"{slurm_job_id()}, which resumes from it",
            )
        return Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} {where}; saved {self.checkpoint}: continue the run with "
            f"--resume {self.checkpoint}",
        )


def slurm_job_id() -> str | None:
    """This SLURM job's id as `scontrol requeue` takes it (an array task's: ARRAYJOB_TASK), None outside SLURM."""
    if array_job := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeued_checkpoint(out_dir: str | Path) -> Path | None:
    """Under SLURM, the HPC checkpoint (Lightning's OUT/hpc_ckpt_N.ckpt, the highest N) that this very job saved
    before it requeued itself, from which the requeued job resumes; None elsewhere, or where the newest one is another
    job's (claim_out_dir counts those as an earlier run's)."""
    if not SLURMEnvironment.detect() or slurm_job_id() is None:
        return None
    saved = sorted(Path(out_dir).glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rpartition("_")[2] or 0))
    if not saved:
        return None
    job = torch.load(saved[-1], map_location="cpu", weights_only=True, mmap=True).get("slurm_job")
    return saved[-1] if job == slurm_job_id() else None


class StopOnDivergence(Callback):
    """Training stops at the step whose loss is not finite, or above `max_loss` (train.max_loss), or after which the
    weights are not finite: before any checkpoint holds that step, with one line naming it and the last good
    checkpoint (`last`). Every process stops at the same step (a process whose own loss diverged stops them all)."""

    def __init__(self, last: Path, max_loss: float | None = None):
        self.last, self.max_loss = last, max_loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index: int) -> None:
        problem = self._problem(outputs, pl_module)
        if not trainer.strategy.reduce_boolean_decision(bool(problem), all=False):
            return
        raise MbtasksError(
            f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): "
            f"{problem or 'the loss of another process diverged'}; {self._last_good()}"
        )

    def _problem(self, outputs, pl_module: pl.LightningModule) -> str:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            value = float(loss.detach())
            if not math.isfinite(value):
                return f"the loss is {value}"
            if self.max_loss is not None and value > self.max_loss:
                return f"the loss {value:.4g} is above train.max_loss={self.max_loss:g}"
        # One reduction over all the weights (a norm overflows only where weights are past 1e19: diverged as well).
        norm = torch.nn.utils.get_total_norm([p.detach() for p in pl_module.parameters()])
        return "" if torch.isfinite(norm) else "the weights are not finite after it"

    def _last_good(self) -> str:
        if not self.last.is_file():
            return "no checkpoint was written before it: lower train.lr (or set train.gradient_clip) and start afresh"
        step = torch.load(self.last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        return (
            f"the last good checkpoint is {self.last} (after step {step}): lower train.lr (or set "
            "train.gradient_clip) and resume from it, or start afresh"
        )


def claim_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """The training output folder, created; one that holds checkpoints of an earlier run is refused unless the run is
    resumed, or `overwrite` asks to remove those checkpoints (else Lightning would write best-v1.ckpt beside
    best.ckpt, and `evaluate OUT/checkpoints/best.ckpt` would score the old model)."""
    out = output_folder(out_dir)
    # Lightning's HPC checkpoints too: under SLURM it would resume from them by itself (requeued_checkpoint).
    earlier = sorted((out / "checkpoints").glob("*.ckpt")) + sorted(out.glob("hpc_ckpt_*.ckpt"))
    if earlier and not resume:
        if not overwrite:
            raise MbtasksError(
                f"holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}): pass "
                f"--resume {out / 'checkpoints' / 'last.ckpt'} to continue it, --overwrite to replace "
                "it, or set train.out_dir to a new folder",
                out,
            )
        for checkpoint in earlier:
            checkpoint.unlink(missing_ok=True)  # DDP processes each run this: another may have removed it
    return out


def out_dir_lock(out_dir: str | Path) -> contextlib.AbstractContextManager:
    """The training folder held for this run while the block runs (run_lock), created if missing; taken by the run's
    first process only: the other processes of a multi-process run (started by Lightning's launcher, torchrun or
    SLURM, which say their rank in the environment) write into the folder their first process holds."""
    out = output_folder(out_dir)
    rank = next((os.environ[key] for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if key in os.environ), "0")
    first = int(rank) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    return run_lock(out) if first else contextlib.nullcontext(out)


def layer_sync(train: TrainConfig) -> list[LayerSync]:
    """train.sync_batchnorm: Lightning's SyncBN on GPUs; torch's SyncBatchNorm is GPU-only, so CPU processes
    synchronise through an all_reduce."""
    if not train.sync_batchnorm:
        return []
    return [TorchSyncBatchNorm() if torch.cuda.is_available() else AllReduceSyncBatchNorm()]


def check_train_settings(train: TrainConfig) -> None:
    """The training settings that depend on this machine, checked before any folder is made (the recipe's own
    values and ranges were checked when it was loaded: config.py): the accelerator is there, the devices fit it, the
    loggers' packages are installed, and Lightning takes them together."""
    if train.accelerator != "auto" and not _accelerator_available(train.accelerator):
        raise MbtasksError(
            f"train.accelerator={train.accelerator}, but this machine has no {train.accelerator} "
            "device: set train.accelerator=cpu (or auto)"
        )
    on_cpu = train.accelerator == "cpu" or (train.accelerator == "auto" and not _accelerator_available("gpu"))
    if on_cpu:
        devices = train.devices
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        if devices == -1 or not (devices == "auto" or type(devices) is int):
            # Lightning counts processes on the CPU: device indices and -1 (every GPU) are a GPU's.
            raise MbtasksError(
                f"train.devices={train.devices} names GPUs, but training runs on the CPU: give the "
                "number of processes (e.g. 1)"
            )
        if type(devices) is int and devices > (os.cpu_count() or 1):
            # Lightning would start them all, one process per device: past the core count that only thrashes the
            # machine.
            raise MbtasksError(
                f"train.devices={devices} on the CPU starts {devices} processes on this machine, "
                f"which has {os.cpu_count()} CPUs"
            )
    for name in train.loggers:
        package = LOGGERS[name][1]
        if package is not None and importlib.util.find_spec(package) is None:
            raise MbtasksError(f"train.loggers names {name}, which needs the {package} package: pip install {package}")
    # Lightning's own checks of the combination (a strategy's package or accelerator, a precision's package): a
    # trainer built and dropped, which makes no folder; the run builds its own after the data and the model.
    _lightning_trainer(train, [], False, for_fit=False)


def _accelerator_available(name: str) -> bool:
    """Whether this machine has the accelerator (Lightning's "gpu": CUDA or Apple's MPS)."""
    if name == "gpu":
        return CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    return AcceleratorRegistry[name]["accelerator"].is_available()


def build_loggers(names: list[str], out: Path) -> list:
    """Lightning's loggers by name (check_train_settings has made sure their packages are there)."""
    from pytorch_lightning import loggers

    built = []
    for name in names:
        class_name, _ = LOGGERS[name]  # the packages were checked with the other settings (check_train_settings)
        logger_class = getattr(loggers, class_name)
        built.append(
            logger_class(out, name="logs")
            if name == "csv"
            else logger_class(save_dir=str(out), name=name)
            if name != "mlflow"
            else logger_class(save_dir=str(out / "mlruns"))
        )
    return built


def checkpoint_callbacks(train: TrainConfig, monitor: str) -> list[ModelCheckpoint]:
    """best.ckpt by the monitored metric; last.ckpt after every epoch (and every K steps); epoch{N}.ckpt every K
    epochs. last.ckpt is its own callback: Lightning's save_last only follows the saves of a monitored one."""
    folder = Path(train.out_dir) / "checkpoints"
    common = {"dirpath": folder, "auto_insert_metric_name": False, "enable_version_counter": False}
    callbacks = [
        ModelCheckpoint(filename="best", monitor=monitor, mode="max", **common),
        ModelCheckpoint(filename="last", save_on_train_epoch_end=True, **common),
    ]
    if train.checkpoint_every_steps:
        callbacks.append(ModelCheckpoint(filename="last", every_n_train_steps=train.checkpoint_every_steps, **common))
    if train.keep_every_epochs:
        callbacks.append(
            ModelCheckpoint(filename="epoch{epoch}", every_n_epochs=train.keep_every_epochs, save_top_k=-1, **common)
        )
    return callbacks


def build_trainer(config: Config, monitor: str, for_fit: bool = True) -> pl.Trainer:
    """The Lightning trainer of a recipe: for training with checkpoints, loggers and EMA; else for evaluation."""
    train = config.train
    out = Path(train.out_dir)
    callbacks, loggers = [], False
    if for_fit:
        callbacks = [
            *checkpoint_callbacks(train, monitor),
            LearningRateMonitor(logging_interval="step"),
            RandomState(),
            StopOnSignal(out / "checkpoints" / "last.ckpt"),
            StopOnDivergence(out / "checkpoints" / "last.ckpt", train.max_loss),
        ]
        if train.ema_decay is not None:
            # The averaged weights are the ones validated and saved as the checkpoint's model (Lightning's EMA).
            callbacks.append(EMAWeightAveraging(decay=train.ema_decay))
        loggers = build_loggers(train.loggers, out)
        if train.log_images_every is not None:
            callbacks.append(ValidationImages(train.log_images_every, train.log_images))
    return _lightning_trainer(train, callbacks, loggers, for_fit)


def fit(trainer: pl.Trainer, task: pl.LightningModule, data: pl.LightningDataModule, resume: str | None) -> None:
    """trainer.fit, a run stopped by a signal raised as Interrupted (StopOnSignal's line)."""
    try:
        trainer.fit(task, datamodule=data, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        stop = next(c for c in trainer.callbacks if isinstance(c, StopOnSignal))
        raise stop.stopped(trainer) from None


def _lightning_trainer(train: TrainConfig, callbacks: list, loggers, for_fit: bool) -> pl.Trainer:
    """Lightning's trainer of the settings (it makes no folder until it runs), or its refusal in one line."""
    limits = {
        key: getattr(train, key)
        for key in ("limit_train_batches", "limit_val_batches")
        if getattr(train, key) is not None
    }
    try:
        return pl.Trainer(
            max_epochs=train.epochs,
            accelerator=train.accelerator,
            devices=train.devices,
            num_nodes=train.num_nodes,
            strategy=train.strategy,
            precision=train.precision,
            accumulate_grad_batches=train.accumulate_grad_batches,
            check_val_every_n_epoch=train.val_every,
            gradient_clip_val=train.gradient_clip,
            log_every_n_steps=train.log_every,
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO(), *layer_sync(train)],
            # The data modules give each process its share of every epoch's one seeded order (samplers.py).
            use_distributed_sampler=False,
            enable_progress_bar=train.progress_bar,
            enable_model_summary=for_fit,
            default_root_dir=train.out_dir,
            **limits,
        )
    except (MisconfigurationException, ValueError, TypeError, ModuleNotFoundError) as error:
        # Lightning checks these settings itself (a strategy's accelerator, a package a strategy or precision needs):
        # its refusal is the user's mistake.
        raise MbtasksError(f"Lightning refuses the train settings: {' '.join(str(error).split())}") from None
