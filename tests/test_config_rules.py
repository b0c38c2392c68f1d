"""Every config rule is checked when the recipe is loaded: a typo or a value out of range is one line `mbtasks: error:
...` with exit 2, the closest valid name for a mistyped one, and nothing written (no output folder, no data set).
Those that depend on the machine (the accelerator is there, the devices fit it, a logger's package is installed), and
Lightning's own refusals of a combination, come as early: before any folder is made.
The allowed names are defined once (config.py) and are Lightning's own."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import MBTASKS

from mbtasks import config as config_module
from mbtasks.cli import main
from mbtasks.config import (
    ACCELERATORS,
    LOGGERS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    TrainConfig,
    load_config,
)

DEMO = Path(__file__).resolve().parents[1] / "mbtasks/recipes/demo/det_shapes.yaml"
BATCHES = "must be a number of batches (0 or more) or a fraction of them from 0.0 to 1.0"
DEVICES = "must be auto, a number of devices (-1: all of them) or a list of device indices"
PRECISION = (
    "must be one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, transformer-engine, "
    "transformer-engine-float16, 32, 16, bf16, 64"
)
SIZE = "must be a positive integer or [height, width]"
LOGGER_LIST = "must be a list of csv, tensorboard, wandb, mlflow (each at most once)"

# name -> (the --set settings that break one rule, the whole message after "mbtasks: error: DEMO: ").
CASES = {
    # names: a typo gets the closest valid name
    "schedule": (
        ["train.schedule=cosin"],
        "train.schedule must be one of cosine, poly, step, multistep, constant, got 'cosin' (did you mean 'cosine'?)",
    ),
    "milestones": (
        ["train.lr_milestones=[22, 16]"],
        "train.lr_milestones must be a list of increasing epochs above 0, got [22, 16]",
    ),
    "schedule_unrelated": (
        ["train.schedule=exponential"],
        "train.schedule must be one of cosine, poly, step, multistep, constant, got 'exponential'",
    ),
    "optimizer": (
        ["train.optimizer=adam"],
        "train.optimizer must be one of sgd, adamw, rmsprop, got 'adam' (did you mean 'adamw'?)",
    ),
    "optimizer_upper_case": (
        ["train.optimizer=SGD"],
        "train.optimizer must be one of sgd, adamw, rmsprop, got 'SGD' (did you mean 'sgd'?)",
    ),
    "precision": (["train.precision=16-mix"], f"train.precision {PRECISION}, got '16-mix' (did you mean '16-mixed'?)"),
    "precision_number": (["train.precision=8"], f"train.precision {PRECISION}, got 8"),
    "precision_not_a_name": (["train.precision=1.5"], "train.precision must be str or int, got 1.5"),
    "accelerator": (
        ["train.accelerator=gpus"],
        "train.accelerator must be one of auto, cpu, gpu, cuda, mps, tpu, got 'gpus' (did you mean 'gpu'?)",
    ),
    "strategy": (
        ["train.strategy=dpp"],
        "train.strategy must be one of auto, ddp, deepspeed, fsdp, xla, ddp_spawn, "
        "..., got 'dpp' (did you mean 'ddp'?)",
    ),
    "loggers": (
        ["train.loggers=[csv, tensorbord]"],
        f"train.loggers {LOGGER_LIST}, got ['csv', 'tensorbord'] (did you mean 'tensorboard'?)",
    ),
    "loggers_twice": (["train.loggers=[csv, csv]"], f"train.loggers {LOGGER_LIST}, got ['csv', 'csv']"),
    "loggers_not_a_list": (["train.loggers=csv"], "train.loggers must be list, got 'csv'"),
    # unknown keys: the closest known key
    "key_train": (["train.shedule=cosine"], "unknown key train.shedule (did you mean train.schedule?)"),
    "key_model": (["model.optionz={width_mult: 0.5}"], "unknown key model.optionz (did you mean model.options?)"),
    "key_data": (["data.batchsize=4"], "unknown key data.batchsize (did you mean data.batch_size?)"),
    "key_section": (["modle.name=mobilenet_v1"], "unknown key modle (did you mean model?)"),
    "key_unrelated": (
        ["data.colour=red"],
        "unknown key data.colour (known: root, format, synth_dir, synth, train_split, "
        "val_split, size, augmentation, batch_size, val_batch_size, num_workers, max_pixels)",
    ),
    "section_not_a_mapping": (["train=5"], "train must be a mapping, got int"),
    # sizes
    "size_zero": (["data.size=0"], f"data.size {SIZE}, got 0"),
    "size_pair_with_zero": (["data.size=[0, 5]"], f"data.size {SIZE}, got [0, 5]"),
    "size_word": (["data.size=big"], f"data.size {SIZE}, got 'big'"),
    "size_of_three_sides": (["data.size=[64, 64, 3]"], f"data.size {SIZE}, got [64, 64, 3]"),
    "batch_size": (["data.batch_size=0"], "data.batch_size must be at least 1, got 0"),
    "batch_size_not_whole": (["data.batch_size=2.5"], "data.batch_size must be int, got 2.5"),
    "val_batch_size": (["data.val_batch_size=0"], "data.val_batch_size must be at least 1, got 0"),
    "num_workers": (["data.num_workers=-1"], "data.num_workers must be at least 0, got -1"),
    "max_pixels": (["data.max_pixels=0"], "data.max_pixels must be at least 1, got 0"),
    # numbers out of range
    "epochs": (["train.epochs=0"], "train.epochs must be at least 1, got 0"),
    "log_images_every": (["train.log_images_every=0"], "train.log_images_every must be at least 1, got 0"),
    "log_images": (["train.log_images=0"], "train.log_images must be at least 1, got 0"),
    "epochs_word": (["train.epochs=ten"], "train.epochs must be int, got 'ten'"),
    "lr_zero": (["train.lr=0"], "train.lr must be above 0, got 0"),
    "lr_negative": (["train.lr=-0.1"], "train.lr must be above 0, got -0.1"),
    "momentum": (["train.momentum=1.5"], "train.momentum must be between 0 and 1, got 1.5"),
    "weight_decay": (["train.weight_decay=-0.0001"], "train.weight_decay must be at least 0, got -0.0001"),
    "nesterov_without_momentum": (
        ["train.optimizer=sgd", "train.nesterov=true", "train.momentum=0"],
        "train.nesterov needs train.momentum above 0 (Nesterov momentum), got momentum 0.0",
    ),
    "nesterov_not_a_bool": (["train.nesterov=maybe"], "train.nesterov must be bool, got 'maybe'"),
    "warmup_epochs": (["train.warmup_epochs=-1"], "train.warmup_epochs must be at least 0, got -1"),
    "warmup_factor_zero": (["train.warmup_factor=0"], "train.warmup_factor must be above 0 and at most 1, got 0"),
    "warmup_factor_above_1": (["train.warmup_factor=2"], "train.warmup_factor must be above 0 and at most 1, got 2"),
    "poly_power": (["train.poly_power=0"], "train.poly_power must be above 0, got 0"),
    "lr_step_epochs": (["train.lr_step_epochs=0"], "train.lr_step_epochs must be above 0, got 0"),
    "lr_gamma": (["train.lr_gamma=-0.5"], "train.lr_gamma must be above 0, got -0.5"),
    "label_smoothing": (["train.label_smoothing=1.5"], "train.label_smoothing must be between 0 and 1, got 1.5"),
    "seed_negative": (["train.seed=-1"], "train.seed must be between 0 and 4294967295, got -1"),
    "seed_too_big": (["train.seed=4294967296"], "train.seed must be between 0 and 4294967295, got 4294967296"),
    "num_nodes": (["train.num_nodes=0"], "train.num_nodes must be at least 1, got 0"),
    "devices_zero": (["train.devices=0"], f"train.devices {DEVICES}, got 0"),
    "devices_zero_as_text": (["train.devices='0'"], f"train.devices {DEVICES}, got '0'"),
    "devices_empty_list": (["train.devices=[]"], f"train.devices {DEVICES}, got []"),
    "devices_repeated": (["train.devices=[0, 0]"], f"train.devices {DEVICES}, got [0, 0]"),
    "devices_word": (["train.devices=many"], f"train.devices {DEVICES}, got 'many'"),
    "val_every": (["train.val_every=0"], "train.val_every must be at least 1, got 0"),
    "log_every": (["train.log_every=0"], "train.log_every must be at least 1, got 0"),
    "gradient_clip": (["train.gradient_clip=0"], "train.gradient_clip must be above 0, got 0"),
    "max_loss": (["train.max_loss=-1"], "train.max_loss must be above 0, got -1"),
    "limit_val_batches": (["train.limit_val_batches=-1"], f"train.limit_val_batches {BATCHES}, got -1"),
    "limit_train_batches_fraction": (
        ["train.limit_train_batches=1.5"],
        f"train.limit_train_batches {BATCHES}, got 1.5",
    ),
    "limit_train_batches_bool": (["train.limit_train_batches=true"], f"train.limit_train_batches {BATCHES}, got True"),
    "accumulate_grad_batches": (
        ["train.accumulate_grad_batches=0"],
        "train.accumulate_grad_batches must be at least 1, got 0",
    ),
    "ema_decay_one": (["train.ema_decay=1"], "train.ema_decay must be between 0 and 1 (exclusive), got 1"),
    "ema_decay_zero": (["train.ema_decay=0"], "train.ema_decay must be between 0 and 1 (exclusive), got 0"),
    "checkpoint_every_steps": (
        ["train.checkpoint_every_steps=0"],
        "train.checkpoint_every_steps must be at least 1, got 0",
    ),
    "keep_every_epochs": (["train.keep_every_epochs=0"], "train.keep_every_epochs must be at least 1, got 0"),
}
# Cases run through the console script (the rest in this process through main(): the same code path, without
# starting Python each time): one of each kind of rule.
THROUGH_THE_CONSOLE_SCRIPT = [
    "schedule",
    "optimizer",
    "precision",
    "loggers",
    "key_train",
    "size_pair_with_zero",
    "lr_zero",
    "limit_val_batches",
    "nesterov_without_momentum",
]


def _arguments(settings: list[str], root: Path) -> list[str]:
    """`train --config DEMO` with the data set and the output folder under `root`, then the case's settings."""
    every = [f"data.synth_dir={root / 'data'}", f"train.out_dir={root / 'out'}", *settings]
    return ["train", "--config", str(DEMO), *[a for s in every for a in ("--set", s)]]


def _assert_refused(code: int, stdout: str, stderr: str, message: str, root: Path) -> None:
    """Exit 2, exactly the one line, nothing on stdout, and nothing written: no output folder, no data set, nothing
    in the working folder."""
    assert code == 2, stderr[-3000:]
    assert stderr.splitlines() == [f"mbtasks: error: {DEMO}: {message}"], stderr[-3000:]
    assert stdout == ""
    assert list(root.iterdir()) == [root / "cwd"] and list((root / "cwd").iterdir()) == []


def _scratch(root: Path) -> Path:
    (root / "cwd").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def console_outcomes(tmp_path_factory) -> dict:
    """The console script's cases, two at a time (each is mostly starting Python)."""
    scratch = tmp_path_factory.mktemp("console")

    def run(name: str):
        root = _scratch(scratch / name)
        result = subprocess.run(
            [MBTASKS, *_arguments(CASES[name][0], root)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root / "cwd",
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return result.returncode, result.stdout, result.stderr, root

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(THROUGH_THE_CONSOLE_SCRIPT, pool.map(run, THROUGH_THE_CONSOLE_SCRIPT)))


@pytest.mark.parametrize("name", THROUGH_THE_CONSOLE_SCRIPT)
def test_console_script_refuses_a_broken_rule_before_anything_is_written(console_outcomes, name):
    code, stdout, stderr, root = console_outcomes[name]
    _assert_refused(code, stdout, stderr, CASES[name][1], root)


@pytest.mark.parametrize("name", [name for name in CASES if name not in THROUGH_THE_CONSOLE_SCRIPT])
def test_a_broken_rule_is_refused_before_anything_is_written(name, tmp_path, capsys, monkeypatch):
    root = _scratch(tmp_path)
    monkeypatch.chdir(root / "cwd")
    code = main(_arguments(CASES[name][0], root))
    captured = capsys.readouterr()
    _assert_refused(code, captured.out, captured.err, CASES[name][1], root)


def test_every_field_with_a_rule_has_a_case():
    """A rule added to config.py without a case here fails this test."""
    ruled = {
        f"{section}.{f.name}"
        for section, cls in (
            ("model", config_module.ModelConfig),
            ("data", config_module.DataConfig),
            ("train", TrainConfig),
        )
        for f in dataclasses.fields(cls)
        if f.metadata
    }
    covered = {setting.split("=")[0] for settings, _ in CASES.values() for setting in settings}
    assert ruled - covered == set()


def test_the_names_are_lightnings_own():
    """The sets config.py writes out (so that loading a recipe needs no torch) are the installed Lightning's."""
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    accepted = [value for literal in typing.get_args(_PRECISION_INPUT) for value in typing.get_args(literal)]
    assert sorted(map(repr, PRECISIONS)) == sorted(map(repr, accepted))
    assert set(ACCELERATORS) == {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    assert set(STRATEGIES) == {"auto", *StrategyRegistry.available_strategies()}
    from pytorch_lightning import loggers

    assert all(hasattr(loggers, class_name) for class_name, _ in LOGGERS.values())


@pytest.mark.parametrize(
    "key, values",
    [
        ("train.schedule", SCHEDULES),
        ("train.optimizer", OPTIMIZERS),
        ("train.precision", PRECISIONS),
        ("train.accelerator", ACCELERATORS),
        ("train.strategy", STRATEGIES),
        ("train.loggers", [[], *([name] for name in LOGGERS), list(LOGGERS)]),
        ("train.devices", ["auto", 1, 2, -1, [0], [0, 1], "1", "-1", "0,1", "0,"]),
        ("train.limit_train_batches", [None, 0, 1, 5, 0.0, 0.25, 1.0]),
        ("train.limit_val_batches", [0, 3, 0.5]),
        ("train.ema_decay", [None, 0.5, 0.9999]),
        ("train.warmup_factor", [0.001, 1]),
        ("data.size", [None, 1, 320, [320, 512]]),
    ],
)
def test_every_allowed_value_loads(key, values):
    section, name = key.split(".")
    for value in values:
        config = load_config(DEMO, [f"{key}={json.dumps(value)}"])  # JSON is YAML: "32" stays a string
        assert getattr(getattr(config, section), name) == value


def test_the_trainer_and_the_optimiser_read_the_names_from_config():
    from mbtasks.tasks import optimizer, trainer

    assert optimizer.SCHEDULES is SCHEDULES and optimizer.OPTIMIZERS is OPTIMIZERS and trainer.LOGGERS is LOGGERS


class _Module(torch.nn.Module):
    """What configure_optimizer reads of a LightningModule: parameters, the trainer's step count, the warm-up."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.trainer = type("Trainer", (), {"estimated_stepping_batches": 20, "max_epochs": 2})()

    def warmup_steps(self, steps_per_epoch: float) -> int:
        return 2


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_allowed_optimiser_and_schedule_is_built(optimizer, schedule):
    from mbtasks.tasks.optimizer import configure_optimizer

    built = configure_optimizer(_Module(), TrainConfig(optimizer=optimizer, schedule=schedule))
    assert type(built["optimizer"]).__name__.lower() == optimizer
    main_schedule = built["lr_scheduler"]["scheduler"]._schedulers[1]  # after the LinearLR warm-up
    assert (
        type(main_schedule).__name__
        == {
            "cosine": "CosineAnnealingLR",
            "poly": "PolynomialLR",
            "step": "StepLR",
            "multistep": "MultiStepLR",
            "constant": "ConstantLR",
        }[schedule]
    )


def test_multistep_multiplies_by_gamma_at_each_milestone_epoch():
    """torchvision's detection schedule: warm-up, then lr x 0.1 at epochs 16 and 22 (here 1 and 1.5 of 2 epochs of
    10 steps, the warm-up 2 steps)."""
    from mbtasks.tasks.optimizer import configure_optimizer

    train = TrainConfig(lr=1.0, schedule="multistep", lr_milestones=[1, 1.5], lr_gamma=0.1)
    built = configure_optimizer(_Module(), train)
    rates = []
    for _ in range(20):
        rates.append(built["optimizer"].param_groups[0]["lr"])
        built["optimizer"].step()
        built["lr_scheduler"]["scheduler"].step()
    assert rates[0] == pytest.approx(0.001) and rates[2:10] == pytest.approx([1.0] * 8)
    assert rates[10:15] == pytest.approx([0.1] * 5) and rates[15:] == pytest.approx([0.01] * 5)


# The rules that depend on this machine: checked by the trainer, still before any folder is made.
MACHINE_CASES = {
    "devices_past_the_cpus": (
        [f"train.devices={(os.cpu_count() or 1) + 1}"],
        f"train.devices={(os.cpu_count() or 1) + 1} on the CPU starts {(os.cpu_count() or 1) + 1} "
        f"processes on this machine, which has {os.cpu_count()} CPUs",
    ),
    "device_indices_on_the_cpu": (
        ["train.devices=[0, 1]"],
        "train.devices=[0, 1] names GPUs, but training runs on the CPU: give the number of processes (e.g. 1)",
    ),
    "every_gpu_on_the_cpu": (
        ["train.devices=-1"],
        "train.devices=-1 names GPUs, but training runs on the CPU: give the number of processes (e.g. 1)",
    ),
}
if not torch.cuda.is_available():
    MACHINE_CASES["no_gpu_here"] = (
        ["train.accelerator=cuda"],
        "train.accelerator=cuda, but this machine has no cuda device: set train.accelerator=cpu (or auto)",
    )
# Lightning's own refusals of a combination (its text, after the first words), from a trainer built before any folder.
MACHINE_CASES["strategy_of_a_gpu"] = (
    ["train.strategy=fsdp"],
    "Lightning refuses the train settings: The strategy `fsdp` requires a GPU accelerator, ...",
)
if importlib.util.find_spec("torch_xla") is None:
    MACHINE_CASES["strategy_of_a_package"] = (
        ["train.strategy=xla"],
        "Lightning refuses the train settings: Requirement 'torch_xla>=1.13' not met. ...",
    )
MISSING_LOGGERS = [
    name for name, (_, package) in LOGGERS.items() if package is not None and importlib.util.find_spec(package) is None
]
if MISSING_LOGGERS:
    name, package = MISSING_LOGGERS[0], LOGGERS[MISSING_LOGGERS[0]][1]
    MACHINE_CASES["logger_not_installed"] = (
        [f"train.loggers=[csv, {name}]"],
        f"train.loggers names {name}, which needs the {package} package: pip install {package}",
    )


@pytest.mark.parametrize("name", MACHINE_CASES)
def test_a_setting_this_machine_cannot_run_is_refused_before_anything_is_written(name, tmp_path, capsys, monkeypatch):
    root = _scratch(tmp_path)
    monkeypatch.chdir(root / "cwd")
    settings, message = MACHINE_CASES[name]
    code = main(_arguments(settings, root))  # the demo trains on the CPU (train.accelerator: cpu)
    captured = capsys.readouterr()
    assert code == 2, captured.err[-3000:]
    lines = captured.err.splitlines()
    if message.endswith(" ..."):  # Lightning's words, not ours: their start
        assert len(lines) == 1 and lines[0].startswith(f"mbtasks: error: {message[:-4]}"), lines
    else:
        assert lines == [f"mbtasks: error: {message}"]
    assert list(root.iterdir()) == [root / "cwd"] and list((root / "cwd").iterdir()) == []


def test_console_script_refuses_a_data_format_typo_before_anything_is_written(tmp_path):
    """data.format names a registered data format (datasets/formats.py): a typo gets the closest, nothing written."""
    root = _scratch(tmp_path)
    result = subprocess.run(
        [MBTASKS, *_arguments(["data.format=cocoo"], root)],
        cwd=root / "cwd",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("mbtasks: error: unknown data format 'cocoo' (did you mean 'coco'?); known: ")
    assert list(root.iterdir()) == [root / "cwd"] and list((root / "cwd").iterdir()) == []
