"""What every task shares. BaseDataModule: the data root or the embedded set, and the loaders. BaseTask: the network
built from the recipe, the optimiser and schedule, the checkpoint record, the end of validation (per-sample
results gathered over processes -> scored -> logged), and prediction on photos (answers -> files)."""

import copy
import ctypes
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import Config, config_from_dict
from ..datasets.file_checks import check_files
from ..datasets.formats import data_format, recognised_format
from ..datasets.image_transforms import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.mapped import Mapped
from ..datasets.samplers import EpochSampler, ResumableLoader, SeededAugmentation
from ..datasets.synthetic import write_synthetic_once
from ..errors import MbtasksError
from ..evaluation.report import Section, write_report
from ..io.executorch_runtime import ExecutorchModel
from ..io.images import set_max_pixels
from ..io.onnx_runtime import OnnxModel
from ..io.outputs import write_text_atomically
from ..io.records import RECORD_KEY, Record, load_into
from ..models import MODELS, build_configured_model, weights_defaults
from .optimizer import configure_optimizer
from .registry import TASKS

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def task_recipe(config: dict | Config, owner: type) -> Config:
    """A recipe as a Config: a Config as it is, a plain nested dict checked and typed, of the task of `owner` (a task
    or data module class) where it names none. A recipe that names no model trains the task's default, whoever builds
    the task or its data (the CLI, Python, LightningCLI)."""
    # A Config that names no task was made elsewhere (LightningCLI's parser makes one of a YAML mapping): checked here.
    values = dict(config) if not isinstance(config, Config) else config.to_dict() if not config.task else None
    if values is not None:
        values["task"] = values.get("task") or task_of(owner)
        config = config_from_dict(values)
    config.model.name = config.model.name or TASKS.get(config.task).default_model
    return config


def task_of(owner: type) -> str:
    """The registered task of a task class (its `task`) or of a data module class (the task whose data module it is,
    or derives from); "" for neither."""
    if getattr(owner, "task", ""):
        return owner.task
    for klass in owner.__mro__:
        for name, task in TASKS.items():
            if task.data_module is klass:
                return name
    return ""


class BaseDataModule(pl.LightningDataModule):
    """A task's data: `data.root` in a data format of the task's kind, or the embedded set written to
    `data.synth_dir`. `self.format` reads it: the format `data.format` names, else the embedded set's
    (`default_format`) or the one that recognises the root; its name goes into the recipe, so that a checkpoint's
    evaluate, predict and export read the data as training did.

    A subclass sets `format_kind` and `default_format` and builds in setup, through `self.format`, `val_set` and, for
    "fit", `train_set` with its random augmentation `train_transform` (an albumentations pipeline, or one with its
    call and `set_random_seed`).
    """

    format_kind: ClassVar[str]  # the kind of data format the task reads (datasets/formats.py)
    default_format: ClassVar[str]  # the format of its embedded set
    graph_input: ClassVar[Callable] = itemgetter(0)  # an item -> its image (picklable for loader workers)
    train_collate: ClassVar[Callable | None] = None
    val_collate: ClassVar[Callable | None] = None

    def __init__(self, config: Config | dict):
        """A task's data module, built from its recipe.

        Args:
            config: the recipe, a Config (its model.name and data.format are filled in where it leaves them empty)
                or the same as a plain nested dict (`task:` may be left out: this data module's task).

        Raises:
            MbtasksError: a recipe of another task, or a setting its rules refuse.
        """
        super().__init__()
        self.config = config = task_recipe(config, type(self))
        data = config.data
        self.root = Path(data.root if data.root is not None else data.synth_dir)
        name = data.format or (
            self.default_format
            if data.root is None
            else recognised_format(self.format_kind, self.root, self.default_format)
        )
        self.format = data_format(self.format_kind, name, self.root)
        data.format = name
        self.train_split = data.train_split or self.format.splits[0]
        self.val_split = data.val_split or self.format.splits[1]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_transform = None
        self.resumed_epoch = 0
        self.resumed_batches = 0  # batches of that epoch a stopped run had trained on
        self.checked_sets: list[Dataset] = []  # the data sets whose files check_files has checked
        set_max_pixels(data.max_pixels)
        # What rebuilds it (LightningDataModule.load_from_checkpoint, LightningCLI). Not sent to the loggers: the
        # task's own hyper-parameters hold the same recipe, and Lightning refuses two different values of one key.
        self.save_hyperparameters({"config": config.to_dict()}, logger=False)

    @staticmethod
    def input_size(config: Config) -> int | list | tuple | None:
        """The input size this config trains at (None: the data set's own)."""
        return config.data.size

    @classmethod
    def predict_transform(cls, config: Config) -> Callable:
        """What a photo (HWC uint8 RGB) goes through to become the network's input, as at evaluation; it reads no
        data, so a checkpoint's recipe gives it on a machine without the training data."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.config.data.root is None:
            write_synthetic_once(self.root, self.format.synthetic_writer(), dict(self.config.data.synth))

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def category_ids(self) -> list:
        """The data set's own ids of the classes (COCO's category ids); empty where the classes are the ids."""
        return []

    def model_dtype(self) -> torch.dtype:
        """The floating type of the model being trained (float64 under `train.precision: 64-true`), which training
        batches made floating on the device take."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return module.dtype if module is not None else torch.float32

    def graph_inputs(self, split: str) -> Dataset:
        """The images of `split` ("val", or "train" after setup("fit")) as the exported graph takes them,
        pre-processed as at evaluation: what int8 calibration and the check against PyTorch run on."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        return Mapped(self.val_set if split == "val" else self.unaugmented_train_set(), type(self).graph_input)

    def augmented_train_set(self) -> Dataset:
        """The training set as the training loader reads it: items by (epoch, index) key, augmented from (seed,
        epoch, index) (after setup("fit"))."""
        return SeededAugmentation(self.train_set, self.train_transform, self.config.train.seed)

    def training_order(self, epoch: int = 0) -> Iterator[tuple[int, int]]:
        """The (epoch, index) keys of an epoch's training samples, in the order one process's loader takes them."""
        seed = self.config.train.seed
        return iter(EpochSampler(self.train_set, lambda: epoch, num_replicas=1, rank=0, shuffle=True, seed=seed))

    def sample_for_drawing(self, item, zoom: int = 1) -> tuple[np.ndarray, object]:
        """(picture, target) of an item of the augmented training set or of the validation set: its image as the
        network sees it before normalisation (HxWx3 uint8 RGB), enlarged `zoom` times (each pixel a square: small
        inputs drawn legibly), its target as the task's `draw_sample` takes it, in the enlarged picture's pixels."""
        raise NotImplementedError

    def unaugmented_train_set(self) -> Dataset:
        """The training set with the evaluation pre-processing (no augmentation), items as the validation set's."""
        raise NotImplementedError

    def _processes(self) -> tuple[int, int]:
        """(how many processes share the data, this one's rank)."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _current_epoch(self) -> int:
        """The epoch the training loader serves: Lightning's count of processed epochs (what it hands set_epoch),
        or, before Lightning has restored that count, the one saved with the checkpoint being resumed (a resumed
        run's first loader iterator is built, and its workers prefetch, before the loops are restored)."""
        processed = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        return max(processed, self.resumed_epoch)

    def state_dict(self) -> dict:
        return {"epoch": self._current_epoch(), "batches": self._batches_taken()}

    def load_state_dict(self, state: dict) -> None:
        # Restored before the training loader is built (Lightning restores the loops, and would hand the loader its
        # own state, only after it has built the loader's first iterator): the loader takes up the epoch from here.
        self.resumed_epoch = int(state.get("epoch", 0))
        self.resumed_batches = int(state.get("batches", 0))

    def check_files(self) -> None:
        """The files of the data sets set up so far checked once, at the cost of their images' headers: missing,
        unreadable, over-sized images, sizes that differ from the annotations or masks, no annotations. Called as
        soon as the data is set up and again (at no cost) by the loaders, so a run fails before its first step."""
        for dataset in (self.train_set, self.val_set):
            if dataset is not None and not any(dataset is done for done in self.checked_sets):
                check_files(dataset)
                self.checked_sets.append(dataset)

    def train_dataloader(self) -> DataLoader:
        """Each process's share of the epoch's seeded order, augmented per sample from (seed, epoch, index)."""
        self.check_files()
        world, rank = self._processes()
        seed, batch_size = self.config.train.seed, self.config.data.batch_size
        sampler = EpochSampler(
            self.train_set, self._current_epoch, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        if self.resumed_batches:
            sampler.resume_at(self.resumed_epoch, self.resumed_batches * batch_size)
        dataset = self.augmented_train_set()
        workers = self.config.data.num_workers
        one_thread_opencv_with(workers)
        return ResumableLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=type(self).train_collate,
            drop_last=len(sampler) > batch_size,
            persistent_workers=workers > 0,
            generator=self._own_generator(),
            worker_init_fn=loader_worker_setup,
            batches_taken=self._batches_taken,
        )

    def _batches_taken(self) -> int:
        """The training batches of the epoch under way that training has taken (0 once the epoch is done: the next
        one starts afresh)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        taken = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return taken if taken < trainer.num_training_batches else 0

    def val_dataloader(self) -> DataLoader:
        """Each process's share of the validation set in order (padded to equal shares: results are kept by key)."""
        self.check_files()
        world, rank = self._processes()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        workers = self.config.data.num_workers
        one_thread_opencv_with(workers)
        return DataLoader(
            self.val_set,
            batch_size=self.config.data.val_batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=type(self).val_collate,
            persistent_workers=workers > 0,
            generator=self._own_generator(),
            worker_init_fn=loader_worker_setup,
        )

    def _own_generator(self) -> torch.Generator:
        """The loader's own generator for its workers' seeds: a loader drawing them from the global one whenever
        Lightning builds its iterator would shift the dropout masks of a resumed run against an uninterrupted one."""
        return torch.Generator().manual_seed(self.config.train.seed)


def one_thread_opencv(worker_id: int | None = None) -> None:
    """OpenCV on one thread (a loader's worker_init_fn), as torch already is in loader workers: each worker is one
    core's worth of work, and OpenCV's own pool (a thread per core in every worker) would oversubscribe the cores."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def loader_worker_setup(worker_id: int | None = None) -> None:
    """Every loader worker's worker_init_fn: OpenCV on one thread (one_thread_opencv); Ctrl+C left to the main
    process, which stops the workers itself; and the worker ended with its parent. torch's worker checks that its
    parent lives, but one that finds it gone still waits, as it exits, to hand over the batches it had queued, which
    nobody will read: it would live on, holding their memory, after its parent was killed (Linux ends it instead)."""
    one_thread_opencv()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """On Linux, SIGKILL this process when the process that started it ends (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent ended before the request was made
        os._exit(1)


def one_thread_opencv_with(workers: int) -> None:
    """Where a loader has worker processes, OpenCV on one thread in this, the main process, before they fork: a
    forked worker inherits the count, and cannot change it itself while the main process's pool is alive (OpenCV
    then waits forever on threads that exist only in the main process). Workers that start afresh (spawn) pin
    their own in one_thread_opencv. The main process leaves the images to the workers anyway."""
    if workers > 0:
        one_thread_opencv()


class BaseTask(pl.LightningModule):
    """A task's network, loss, metrics and optimiser, built from (recipe, class names, category ids), or from the
    recipe alone and then for the classes of the data module a trainer runs it on (as LightningCLI makes it).

    A subclass gives `network` (the registered model and its options for these classes), `build_loss` or its own
    `training_step`, `validation_step` (results kept per sample in `self.results`, keyed so that a sample the
    DistributedSampler repeats counts once), `score` (merged results -> metrics), `figures` (metrics -> logged values)
    and `metrics_table`; for `mbtasks predict`, `write_prediction` (one photo's answer -> its files and JSON entry),
    `draw_answer` (an answer, or the ground truth in its form, drawn on a photo) and, where the network's output is not
    what it needs, `predict_inputs`; for `evaluate --report`, `report_sections` (and `report_files` for saved
    predictions).
    """

    # ---- the task's facts (a subclass registered with `@TASKS.register(name)` sets them; `task` is the name) ----
    task: ClassVar[str] = ""
    data_module: ClassVar[type[BaseDataModule]]  # built from the recipe: the data root or the embedded set, loaders
    monitor: ClassVar[str] = ""  # the logged validation metric that picks best.ckpt (higher is better)
    default_model: ClassVar[str] = ""  # model.name when the recipe names none
    demo_recipe: ClassVar[str] = ""  # its recipe on the embedded data set: a packaged recipe's name or a file
    headline_metrics: ClassVar[tuple[str, ...]] = ()  # keys of `evaluate --json`; the first one present is the figure
    profile_classes: ClassVar[int] = 0  # the class count of its usual data set, for profile-only ablations
    graph_outputs: ClassVar[tuple[str, ...]] = ("logits",)  # output names of its exported ONNX graph
    ablation_head: ClassVar[str | None] = None  # the head family `ablate` puts on each version (None: the backbone)
    progress_bar: ClassVar[tuple[str, ...]] = ()  # logged figures the progress bar shows
    # predict: the options it takes (`prediction_options`, defaults here) and the JSON file of its answers
    prediction_defaults: ClassVar[dict] = {}
    prediction_file: ClassVar[str] = "predictions.json"
    loss_options: ClassVar[tuple[str, ...]] = ()  # model.options that set up the loss, not the network

    def __init__(self, config: dict | Config, class_names: list[str] | None = None, category_ids: list | None = None):
        """A task's LightningModule, built from its recipe and the data's classes.

        Args:
            config: the recipe as a plain nested dict (`task:` may be left out) or a Config (copied).
            class_names: the data's class names; None: the network is built when a trainer sets the task up, for
                the classes of the data module it runs on.
            category_ids: the data's category ids, one per class (empty where the classes are the ids).

        Raises:
            MbtasksError: a recipe of another task, an unknown model or option, or a class count that does not fit.
        """
        super().__init__()
        self.config = task_recipe(config.to_dict() if isinstance(config, Config) else config, type(self))
        self.class_names: list[str] | None = None
        self.category_ids: list = []
        self.model: nn.Module | None = None
        self.evaluation_options: dict = {}
        self.prediction_options: dict = dict(self.prediction_defaults)
        self.metrics: dict = {}
        self.evaluated_images = 0  # images the last validation scored
        self.validation_images = 0  # images of the whole validation set it ran on
        self.validated_whole_set = True  # whether it ran over all of them (not cut by a trainer's limits)
        self.results: dict = {}
        if class_names is not None:
            self.build(class_names, category_ids or [])
        else:
            self.save_hyperparameters({"config": self.config.to_dict(), "class_names": None, "category_ids": None})

    def build(self, class_names: list[str], category_ids: list) -> None:
        """The network and the loss for these classes. The hyper-parameters then hold what rebuilds the same network
        (Module.load_from_checkpoint): the recipe completed with what the weights files gave, less those files
        (the checkpoint holds the trained weights: a rebuild reads no file, nor downloads weights named)."""
        self.class_names, self.category_ids = list(class_names), list(category_ids)
        model = self.config.model
        # The weights file's backbone options go into the recipe itself, so the checkpoint rebuilds the same network.
        model.options = {**weights_defaults(model.weights, model.backbone_weights), **model.options}
        options = dict(model.options)
        self.loss_settings = {name: options.pop(name) for name in self.loss_options if name in options}
        self.model_name, self.model_options = self.network(model.name, options)
        self.model = build_configured_model(self.model_name, self.model_options, model.weights, model.backbone_weights)
        self.loss = self.build_loss()
        self.on_network_built()
        rebuilt = self.config.to_dict()
        rebuilt["model"].update(weights=None, backbone_weights=None)
        self.save_hyperparameters(
            {"config": rebuilt, "class_names": self.class_names, "category_ids": self.category_ids}
        )

    def on_network_built(self) -> None:
        """What the task sets once its classes and network are known (det: the class count into the recipe)."""

    def network(self, name: str, options: dict) -> tuple[str, dict]:
        """What to build for the recipe's model and this task's classes, and nothing else.

        Args:
            name: the recipe's `model.name`.
            options: the recipe's `model.options`, less `loss_options`.

        Returns:
            (MODELS name, its options): e.g. an attribute task's `("attributes_mobilenet_v1", {...})`.
        """
        raise NotImplementedError

    def build_loss(self) -> nn.Module | None:
        """The training loss, from `loss_settings` and the recipe.

        Returns:
            The loss module; None where the model computes its own (torchvision's detectors) or `training_step`
            builds it from the data (embed).
        """
        return None

    def setup(self, stage: str) -> None:
        if self.model is None:
            self.build_for(self.trainer.datamodule)
        if stage == "fit":
            self.check_batch_statistics()

    def build_for(self, data: pl.LightningDataModule | None) -> None:
        """A task made without classes (as LightningCLI makes it) built for the data module it runs on: its classes,
        and its data settings (input size, batch size), which are the ones the data module reads."""
        if not isinstance(data, BaseDataModule):
            raise MbtasksError(
                f"{type(self).__name__} was made without class_names: give them, or train it with its data module "
                f"({self.data_module.__name__}) as the trainer's datamodule"
            )
        self.config.data = copy.deepcopy(data.config.data)
        self.build(data.class_names, data.category_ids)

    def check_batch_statistics(self) -> None:
        """A batch norm after global pooling (DeepLabv3's image pooling, the embedding head) needs two values per
        channel: one image per batch fails deep inside the first step unless SyncBN pools the devices' batches."""
        train, per_step = self.config.train, self.config.data.batch_size
        if train.sync_batchnorm and self.trainer is not None:
            per_step *= self.trainer.world_size
        pooled = [m for m in self.model.modules() if type(m).__name__ == "ASPPPooling" or isinstance(m, nn.BatchNorm1d)]
        if per_step < 2 and pooled:
            raise MbtasksError(
                f"data.batch_size is {self.config.data.batch_size}: {self.model_name} has a batch norm "
                "after global pooling, which needs 2 or more images per step (raise data.batch_size, "
                "or set train.sync_batchnorm: true on several devices)"
            )

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch: tuple, batch_index: int) -> torch.Tensor:
        """A batch (..., images, targets) through the network and `self.loss`; tasks with other batches override."""
        images, targets = batch[-2:]
        loss = self.loss(self.model(images), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self, self.config.train)

    def warmup_steps(self, steps_per_epoch: float) -> int:
        """How many optimiser steps the learning rate warms up over: train.warmup_epochs of them."""
        return int(self.config.train.warmup_epochs * steps_per_epoch)

    # ---- validation: gather -> score -> log ----

    def on_validation_epoch_start(self) -> None:
        self.results = {}

    def on_validation_epoch_end(self) -> None:
        self.validated_whole_set, self.validation_images = self.validation_coverage()
        self.evaluated_images, self.metrics = self.scored_results()
        figures = {**self.figures(self.metrics), "val/images": self.evaluated_images}
        for name, value in figures.items():
            # Every process holds the same merged figures; sync_dist averages equal values (and stops Lightning's
            # warning about logging without it).
            self.log(name, loggable(value), prog_bar=name in self.progress_bar, sync_dist=True)

    def validation_coverage(self) -> tuple[bool, int]:
        """(whether this validation runs over every batch of its loaders, the images of the whole set). Not under a
        trainer's limit: its limit_val_batches (which fast_dev_run and overfit_batches set as well: Lightning's
        trainer/setup.py), nor in the sanity check (num_sanity_val_steps batches)."""
        trainer = self.trainer
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        images = sum(len(loader.dataset) for loader in loaders)
        if trainer.sanity_checking:
            return False, images
        whole = all(
            batches == float("inf") or batches >= len(loader)
            for batches, loader in zip(trainer.num_val_batches, loaders)
        )
        return whole, images

    def scored_results(self) -> tuple[int, dict]:
        """(images scored, metrics) of this epoch's results of every process, on every process."""
        # Scored once, on the first process, from every process's results gathered there; the figures are then
        # sent to the others (an all-gather would hold every detection of 5,000 images in every process).
        merged, outcome = gather_on_first(self.results, self), None
        if merged is not None:
            missing = self.missing_images(merged)
            outcome = ("error", missing) if missing else ("ok", (len(merged), self.score(merged)))
        kind, value = broadcast_from_first(outcome, self)
        if kind == "error":
            raise MbtasksError(value)
        return value

    def missing_images(self, merged: dict) -> str:
        """Why a validation of the whole set scored other than every image once ("" when it did not). One on part of
        the set (validation_coverage) scores the images it saw."""
        if not self.validated_whole_set or len(merged) == self.validation_images:
            return ""
        return f"scored {len(merged)} of the {self.validation_images} validation images"

    def coverage_note(self) -> str:
        """How many images the last validation scored, as the CLI prints it: "150 images", or "32 of the 150
        images" for part of the set."""
        if self.validated_whole_set:
            return f"{self.evaluated_images} images"
        return f"{self.evaluated_images} of the {self.validation_images} images"

    def score(self, merged: dict) -> dict:
        """The task's metrics (its official ones: COCO's, Cityscapes', LFW's protocol, accuracy).

        Args:
            merged: the per-sample results of `validation_step`, key -> result, merged over all processes.

        Returns:
            Metric name -> value, what `evaluate --json` writes.
        """
        raise NotImplementedError

    def figures(self, metrics: dict) -> dict[str, float | None]:
        """What is logged at the end of validation.

        Args:
            metrics: `score`'s metrics.

        Returns:
            Logged name (without `val/`) -> value; None for a figure the data cannot give.
        """
        raise NotImplementedError

    def metrics_table(self) -> str:
        """The metrics as `mbtasks evaluate` prints them.

        Returns:
            The table's text (COCO's 12 lines, Cityscapes' table, ...), of `self.metrics`.
        """
        raise NotImplementedError

    # ---- the report of an evaluation: `mbtasks evaluate --report DIR` ----

    def report_sections(self, data: BaseDataModule, folder: Path, worst: int) -> list[Section]:
        """The task's parts of the report of its last validation (on `data`, whose per-sample results `self.results`
        holds), their pictures written into `folder`; `worst`: how many of the worst-scored images to show."""
        return []

    def write_report(self, data: BaseDataModule, folder: Path, worst: int) -> Path:
        """`folder`/index.html: the headline figures, the task's sections, the table evaluate prints."""
        title = f"{self.task} evaluation: {self.model_name}, {self.coverage_note()}"
        sections = self.report_sections(data, Path(folder), worst)
        return write_report(
            folder, title, report_headline(self.metrics, self.headline_metrics), self.metrics_table(), sections
        )

    @classmethod
    def report_files(cls, options: dict, folder: Path, worst: int) -> list[Section]:
        """The task's parts of the report of saved predictions scored without a model (`score_files`' options)."""
        raise MbtasksError(f"--report of saved predictions is not available for {cls.task}: evaluate a --checkpoint")

    @classmethod
    def write_files_report(cls, options: dict, metrics: dict, table: str, folder: Path, worst: int) -> Path:
        """`folder`/index.html of saved predictions scored without a model."""
        sections = cls.report_files(options, Path(folder), worst)
        return write_report(
            folder,
            f"{cls.task} evaluation of saved predictions",
            report_headline(metrics, cls.headline_metrics),
            table,
            sections,
        )

    # ---- prediction on photos: `mbtasks predict` ----

    def predict_step(self, batch: list[dict], batch_index: int) -> list:
        """The answer for each readable photo of a batch (items with an `input`; unreadable ones carry an `error`)."""
        inputs = [item["input"] for item in batch if "input" in item]
        return self.predict_inputs(inputs) if inputs else []

    def predict_inputs(self, inputs: list[torch.Tensor]) -> list:
        """The network's output for each input (inputs of one size, stacked into one batch), as numpy arrays."""
        return list(self.model(torch.stack(inputs).to(self.device)).float().cpu().numpy())

    def prepare_predictions(self, files: list[Path]) -> None:
        """Check what the options need of the input files before any photo is read (embed: the --pairs file)."""

    def write_prediction(self, out: Path, item: dict, answer) -> dict:
        """Write one photo's pictures under `out` (the picture is `draw_answer`'s).

        Args:
            out: `mbtasks predict --out`.
            item: `file`, its output `name` (relative, ending in the picture's format: .png or .jpg) and `photo`,
                the upright HWC uint8 RGB image.
            answer (Any): the model's answer for the photo, as `predict_inputs` gives it.

        Returns:
            The photo's entry in the task's JSON file (`prediction_file`).
        """
        raise NotImplementedError

    def draw_answer(self, photo: np.ndarray, answer) -> np.ndarray:
        """A new picture: the photo (HxWx3 uint8 RGB) with `answer` drawn on it (one photo's answer as
        `predict_inputs` gives it, drawn with `prediction_options`). Ground truth is drawn by passing it in the
        answer's own form (det: a dict of boxes and labels without scores, captioned without a score)."""
        raise NotImplementedError(f"the {self.task} task draws no pictures")

    def draw_sample(self, photo: np.ndarray, target) -> np.ndarray:
        """A new picture: a data set's sample (its photo as the network sees it, before normalisation) with its
        target (as the data module's `sample_for_drawing` gives it) drawn on it: by default as `draw_answer`
        draws an answer of that form."""
        return self.draw_answer(photo, target)

    def write_predictions(self, out: Path, entries: list[dict]) -> list[str]:
        """Write what covers all photos (the JSON file of the entries); return the lines that say what was written."""
        path = out / self.prediction_file
        write_text_atomically(path, json.dumps(entries, indent=1))
        return [f"wrote {path}"]

    def prediction_paths(self, names: list[str]) -> list[str]:
        """The files, relative to the output folder, that `write_prediction` (for photos of these output names) and
        `write_predictions` write: by default each photo's picture at its name and the JSON file."""
        return [*names, self.prediction_file]

    # ---- rebuilt from a record: evaluate, export, predict and ablate alike ----

    @classmethod
    def from_record(cls, record: Record, config: Config | None = None, source: str | Path = "<record>") -> "BaseTask":
        """The task of a checkpoint's (or exported file's) record: its recipe (or `config`), its classes, its
        network with the record's weights when it holds any (weights that do not fit are one line naming `source`).
        The recipe's weights files are not read again: the record's network is the one that was trained."""
        if config is None:
            if not record.config:
                raise MbtasksError(
                    "carries no recipe (written by an older mbtasks?): its task cannot be rebuilt", source
                )
            config = config_from_dict(record.config, str(source))
        config.model = config_from_dict(record.config, str(source)).model if record.config else config.model
        config.model.weights = config.model.backbone_weights = None
        task = cls(config.to_dict(), record.class_names, record.category_ids)
        if record.state_dict:
            load_into(task.model, record.state_dict, source)
        task.metrics = dict(record.metrics)  # its last validation's (embed: the verification threshold it chose)
        return task

    # ---- its exported graph (export/) and how ONNX Runtime's outputs become its predictions (io/onnx_runtime.py) ----

    @classmethod
    def graph(cls, model: nn.Module) -> nn.Module:
        """The exported graph of the inference network: by default the network (normalised NCHW batch -> outputs)."""
        return model

    @classmethod
    def graph_settings(cls, graph: nn.Module) -> dict:
        """What the exported file's settings record about its graph, beyond the common ones."""
        return {}

    @classmethod
    def graph_dynamic_axes(cls, size: dict[int, str]) -> dict:
        """torch.onnx's dynamic axes: the batch, and `size` (height and width, where they are dynamic) of the input."""
        return {"images": {0: "batch", **size}, **{name: {0: "batch"} for name in cls.graph_outputs}}

    @classmethod
    def graph_pixel_sides(cls, inputs: list[torch.Tensor]) -> dict[str, int]:
        """Outputs measured in the input's pixels, and the side the export check holds them against (det: boxes)."""
        return {}

    @classmethod
    def graph_differences(cls, expected: list[np.ndarray], got: list[np.ndarray]) -> list[float]:
        """Largest |onnxruntime - pytorch| of each output of one input."""
        return [float(np.abs(want - have).max()) for want, have in zip(expected, got)]

    @classmethod
    def runtime_model(cls, session, settings: dict, path: str | Path, runtime: str = "onnxruntime") -> nn.Module:
        """An exported graph behind the contract of the task's model in eval mode: an ONNX Runtime session, or an
        ExecuTorch program (`runtime="executorch"`)."""
        return (ExecutorchModel if runtime == "executorch" else OnnxModel)(session, settings, path)

    @classmethod
    def graph_preprocessing(cls) -> dict:
        """What the exported graph's input is, for an app that feeds it (an ExecuTorch program's metadata)."""
        return {
            "layout": "NCHW",
            "values": "RGB / 255, then (x - mean) / std",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    @classmethod
    def executorch_graph(cls, model: nn.Module) -> nn.Module:
        """The graph of an ExecuTorch program: by default `graph`, exported at the validation images' size."""
        return cls.graph(model)

    @classmethod
    def executorch_dynamic_shapes(cls) -> dict | None:
        """torch.export's dynamic dimensions of the input (None: the program is fixed to the example's size)."""
        return None

    @classmethod
    def executorch_quantised_modules(cls) -> tuple[str, ...]:
        """The graph's modules int8 quantises (empty: all of it)."""
        return ()

    # ---- `mbtasks ablate` ----

    @classmethod
    def ablation_model(cls, recipe_model: str, version: str) -> str:
        """The task's model on a backbone `version`: the recipe's head family where it has that version, else
        `ablation_head`'s; the backbone itself where the task has no head family (image-level tasks)."""
        if cls.ablation_head is None:
            return version
        family = recipe_model.split("_mobilenet_")[0] if "_mobilenet_" in recipe_model else ""
        for head in (family, cls.ablation_head):
            if f"{head}_{version}" in MODELS:
                return f"{head}_{version}"
        raise MbtasksError(f"no {cls.task} model on {version}")

    @classmethod
    def size_overrides(cls, size: int | list[int]) -> list[str]:
        """The `--set` assignments that make a recipe run at input size `size`."""
        return [f"data.size={size}"]

    # ---- scoring files without a model (`mbtasks evaluate` with file options) ----

    @classmethod
    def score_files(cls, options: dict) -> tuple[dict, str, int | None] | None:
        """(metrics, table, images scored) of saved predictions named by evaluate's `options`, or None when they name
        none for this task."""
        return None

    def earlier_predictions(self, folder: Path) -> list[Path]:
        """Files in `folder` where `evaluate --save-predictions` would write, before it runs."""
        return []

    # ---- the checkpoint record ----

    def record(self) -> Record:
        """What rebuilds this network and what it was trained on."""
        return Record(
            self.model_name,
            MODELS.get(self.model_name).backbone,
            self.model_options,
            self.task,
            self.class_names,
            self.category_ids,
            self.config.to_dict(),
            plain(self.metrics),
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[RECORD_KEY] = self.record().to_dict()


def gather_on_first(items: dict, module: pl.LightningModule) -> dict | None:
    """Every process's dict (sample key -> result) merged on the first process (None on the others); a key seen
    twice is kept once: a DistributedSampler pads the last batch with repeated samples, so the same key can come
    from two processes, and keeping each once counts every sample exactly once."""
    if module.trainer is None or module.trainer.world_size == 1:
        return items
    first = module.trainer.global_rank == 0
    gathered = [None] * module.trainer.world_size if first else None
    torch.distributed.gather_object(items, gathered, dst=0)
    if not first:
        return None
    merged = {}
    for part in gathered:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def broadcast_from_first(value, module: pl.LightningModule):
    """The first process's value, on every process."""
    if module.trainer is None or module.trainer.world_size == 1:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def report_headline(metrics: dict, first: tuple[str, ...]) -> dict[str, float]:
    """A report's headline figures: the task's headline metric first, then every other single figure (COCO's 12, the
    means, the accuracies)."""
    return {k: metrics[k] for k in dict.fromkeys([*first, *metrics]) if isinstance(metrics.get(k), float)}


def loggable(value: float | None) -> float:
    """A NaN or missing figure (nothing evaluated, no positives) is logged as 0: a NaN best score is never beaten."""
    return 0.0 if value is None or value != value else float(value)


def shown(value: float | None) -> str:
    """A figure in a table: four decimals, or n/a where it is not defined."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def plain(value):
    """Metrics as plain Python data, which checkpoints load with weights_only=True (numpy scalars would not)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
