"""Training at the scale users run it, shown small: a resumed run is the same run, two processes train as one
process with twice the batch, the schedules, EMA, bf16, and the recipe's settings checked before anything runs."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import MBTASKS, TINY_IMAGE_DATA, WITH_CALLBACK, in_process

from mbtasks.cli import main
from mbtasks.config import TrainConfig
from mbtasks.tasks.optimizer import build_schedule

# Tiny classification on the embedded shapes (12 training images, 9 validation images): random crops, flips and
# colour jitter, and dropout, so the random state matters.
BASE = [
    "--task",
    "cls",
    "--set",
    "model.name=mobilenet_v3_small",
    "--set",
    "model.options={width_mult: 0.35}",
    "--set",
    "data.augmentation=light",
    "--set",
    "data.batch_size=4",
    "--set",
    "data.val_batch_size=9",
    "--set",
    "train.accelerator=cpu",
    "--set",
    "train.progress_bar=false",
    "--set",
    "train.log_every=1",
    "--set",
    "train.optimizer=sgd",
    "--set",
    "train.lr=0.05",
    "--set",
    "train.warmup_epochs=0.5",
    *[a for s in TINY_IMAGE_DATA["cls"] for a in ("--set", s)],
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Run mbtasks with a callback that kills the process (SIGKILL) when the given epoch starts: after the previous
# epoch's checkpoints, as a machine lost mid-run.
KILLED_AT = """
import os, signal, sys
from pytorch_lightning.callbacks import Callback

class Kill(Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

CALLBACK = Kill""" + WITH_CALLBACK.replace("ARGS_FROM", "2")


def _train(*args: str, kill_at_epoch: int | None = None, here: bool = False) -> subprocess.CompletedProcess:
    """`mbtasks train` of the tiny classification: by the console script, killed when `kill_at_epoch` starts if
    given, or `here` in this process (a reference run, whose process is not what is tested)."""
    if here:
        return in_process(["train", *BASE, *args])
    command = (
        [MBTASKS, "train"] if kill_at_epoch is None else [sys.executable, "-c", KILLED_AT, str(kill_at_epoch), "train"]
    )
    return subprocess.run([*command, *BASE, *args], capture_output=True, text=True, timeout=600, env=ENV)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _logged(out: Path, column: str) -> dict[int, float]:
    """step -> value of a per-step column over every metrics.csv of a run (a resumed run logs to a new version)."""
    values = {}
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get(column):
                values[int(row["step"])] = float(row[column])
    return values


def test_a_run_killed_and_resumed_is_the_same_run(tmp_path):
    common = ["--set", "train.epochs=2", "--set", f"data.synth_dir={tmp_path / 'data'}", "--set", "data.num_workers=1"]
    straight = _train(*common, "--set", f"train.out_dir={tmp_path / 'straight'}", here=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _train(*common, "--set", f"train.out_dir={tmp_path / 'killed'}", kill_at_epoch=1)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, at the start of epoch 1
    last = tmp_path / "killed/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = _train(*common, "--set", f"train.out_dir={tmp_path / 'killed'}", "--resume", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    _assert_the_same_run(tmp_path / "straight", tmp_path / "killed", steps=6)


def _assert_the_same_run(straight: Path, resumed: Path, steps: int) -> None:
    """The same weights within 1e-6, the same loss (the same batches) and learning rate at every step."""
    a, b = _weights(straight / "checkpoints/last.ckpt"), _weights(resumed / "checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), key
    for column in ("train/loss", "lr-SGD/pg1"):
        straight_values, resumed_values = _logged(straight, column), _logged(resumed, column)
        assert len(straight_values) == steps and straight_values.keys() == resumed_values.keys(), column
        for step, value in straight_values.items():
            assert resumed_values[step] == pytest.approx(value, abs=1e-6), (column, step)


# Each task's demo recipe, tiny, with dropout off (each process draws its own masks) and every image the same size.
TWO_PROCESS_TASKS = {
    "det": [
        "model.name=ssdlite320_mobilenet_v3_small",
        "model.options={width_mult: 0.35}",
        "data.size=96",
        "data.synth={seed: 1, num_train: 8, num_val: 2, image_size: 96}",
    ],
    "seg": [
        "model.name=lraspp_mobilenet_v3_small",
        "model.options={width_mult: 0.35}",
        "data.size=[48, 96]",
        "data.synth={seed: 1, num_train: 8, num_val: 2, size: [48, 96]}",
    ],
    "embed": [
        "model.options={width_mult: 0.35, embedding_dim: 16, dropout: 0.0}",
        *TINY_IMAGE_DATA["embed"],
        "train.lr=0.002",
    ],  # ArcFace's scale 30 at lr 0.05 blows the weights up to hundreds
}


def _train_task(
    task: str,
    *settings: str,
    kill_at_epoch: int | None = None,
    resume: Path | None = None,
    here: bool = False,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """`mbtasks train` of the task's tiny recipe, 2 steps an epoch, killed when `kill_at_epoch` starts if given, or
    `here` in this process (a reference run); `command`: what runs `train ...` instead of the `mbtasks` script (e.g.
    torchrun)."""
    common = [
        "train.accelerator=cpu",
        "train.progress_bar=false",
        "train.epochs=1",
        "train.limit_train_batches=2",
        "train.limit_val_batches=1",
        "data.num_workers=0",
        "train.sync_batchnorm=true",
        "train.optimizer=sgd",
        "train.lr=0.05",
        "train.warmup_epochs=0",
        "train.log_every=1",
    ]
    args = [a for s in [*common, *TWO_PROCESS_TASKS[task], *settings] for a in ("--set", s)]
    args += ["--resume", str(resume)] if resume else []
    if here:
        return in_process(["train", "--task", task, *args])
    if command is None:
        command = [MBTASKS] if kill_at_epoch is None else [sys.executable, "-c", KILLED_AT, str(kill_at_epoch)]
    return subprocess.run(
        [*command, "train", "--task", task, *args], capture_output=True, text=True, timeout=600, env=ENV
    )


@pytest.mark.parametrize("task", ["det", "seg"])
def test_a_detector_or_segmenter_killed_and_resumed_is_the_same_run(task, tmp_path):
    """As above, with the random IoU crop and flip of SSD training (det) and the random scale, crop and flip of
    segmentation training, in a loader worker, and a warm-up then cosine schedule. The killed run is a process of its
    own; the straight and the resumed run run in this one (the classification's resumes in a fresh process)."""
    common = [
        "train.epochs=2",
        f"data.synth_dir={tmp_path / 'data'}",
        "data.num_workers=1",
        "data.batch_size=2",
        "train.warmup_epochs=1",
        "train.schedule=cosine",
    ]
    straight = _train_task(task, *common, f"train.out_dir={tmp_path / 'straight'}", here=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _train_task(task, *common, f"train.out_dir={tmp_path / 'killed'}", kill_at_epoch=1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "killed/checkpoints/last.ckpt"
    resumed = _train_task(task, *common, f"train.out_dir={tmp_path / 'killed'}", resume=last, here=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_the_same_run(tmp_path / "straight", tmp_path / "killed", steps=4)


# attr and cls train through the same mean-over-the-batch losses, samplers and image data module as embed, which adds
# its own batch composition (identities); their 3 processes each cost the suite 40 s: det, seg and embed run.
@pytest.mark.parametrize("task", TWO_PROCESS_TASKS)
def test_two_processes_train_as_one_process_with_twice_the_batch(task, tmp_path):
    """2 optimiser steps on 2 processes x 2 images against 2 steps on 1 process x 4 images, each image augmented as
    its own: the same weights and batch-norm statistics within 1e-5 (measured 1e-13 to 1e-9). SyncBN gives batch norm
    the whole batch's statistics; the detection and segmentation losses are normalised by the whole batch's
    foreground anchors and labelled pixels. In float64, so that what is compared is the training, not float32
    rounding: in float32 the summation orders differ and a few steps grow the rounding to 6e-5 (measured), as they
    do between a float32 and a float64 run of one process."""
    run = lambda *settings, here=False: _train_task(task, *settings, here=here)  # noqa: E731
    common = [f"data.synth_dir={tmp_path / 'data'}", "train.precision=64-true"]
    one = run(*common, "data.batch_size=4", f"train.out_dir={tmp_path / 'one'}", here=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(
        *common, "data.batch_size=2", "train.devices=2", "train.strategy=ddp", f"train.out_dir={tmp_path / 'two'}"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one/checkpoints/last.ckpt"), _weights(tmp_path / "two/checkpoints/last.ckpt")
    steps = torch.load(tmp_path / "two/checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert steps == torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=True)["global_step"] >= 2
    moved = 0
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-5, rtol=0), key
        moved += key.endswith("running_mean") and bool(a[key].abs().sum() > 0)
    assert moved > 0  # batch-norm statistics were updated, and agree


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    """One epoch of the tiny classification with EMA (decay 0.5), trained in this process: its last checkpoint."""
    folder = tmp_path_factory.mktemp("ema")
    sets = [f"data.synth_dir={folder / 'data'}", "data.num_workers=0", "train.ema_decay=0.5", f"train.out_dir={folder}"]
    result = _train("--set", "train.epochs=1", *[a for s in sets for a in ("--set", s)], here=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "checkpoints/last.ckpt"


def test_ema_weights_are_the_ones_saved_and_evaluated(ema_run):
    checkpoint = torch.load(ema_run, weights_only=True)
    ema, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], current[k]) for k in ema if k.startswith("model."))
    evaluated = in_process(["evaluate", "--checkpoint", str(ema_run)])
    assert evaluated.returncode == 0 and "evaluated 9 images" in evaluated.stdout, evaluated.stderr[-2000:]


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    out = tmp_path / "bf16"
    result = _train(
        "--set",
        "train.epochs=1",
        "--set",
        f"data.synth_dir={tmp_path / 'data'}",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.precision=bf16-mixed",
        "--set",
        f"train.out_dir={out}",
        here=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(torch.isfinite(v.float()).all() for v in _weights(out / "checkpoints/last.ckpt").values())


def test_evaluate_runs_an_eight_gpu_checkpoint_on_the_machine_at_hand(ema_run, tmp_path):
    checkpoint = torch.load(ema_run, weights_only=True)
    checkpoint["mbtasks"]["config"]["train"].update(accelerator="gpu", devices=8, strategy="ddp", num_nodes=2)
    torch.save(checkpoint, tmp_path / "eight_gpus.ckpt")
    evaluated = in_process(["evaluate", "--checkpoint", str(tmp_path / "eight_gpus.ckpt")])
    assert evaluated.returncode == 0 and "evaluated 9 images" in evaluated.stdout, evaluated.stderr[-2000:]


@pytest.mark.parametrize(
    "setting, key",
    [
        ("train.ema_decay=1.5", "train.ema_decay"),
        ("train.accumulate_grad_batches=0", "train.accumulate_grad_batches"),
        ("train.loggers=[csv, comet]", "train.loggers"),
        ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps"),
        ("train.devices=512", "train.devices"),
        ("train.strategy=dpp", "train.strategy"),
    ],
)
def test_bad_training_settings_are_one_line_and_write_nothing(tmp_path, setting, key, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *BASE,
                "--set",
                setting,
                "--set",
                f"data.synth_dir={tmp_path / 'data'}",
                "--set",
                f"train.out_dir={out}",
            ]
        )
        == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], lines
    assert not out.exists()


def _learning_rates(schedule: str, total: int, warmup: int, **settings) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    train = TrainConfig(lr=0.1, schedule=schedule, **settings)
    scheduler = build_schedule(optimizer, train, total, warmup, steps_per_epoch=10)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_step_by_step():
    # Linear warm-up from 0.001 x lr over 10 steps (torchvision's detection reference), then cosine to zero.
    rates = _learning_rates("cosine", 100, 10)
    assert rates[0] == pytest.approx(1e-4) and rates[5] == pytest.approx(0.1 * (0.001 + 0.999 * 5 / 10))
    assert rates[10] == pytest.approx(0.1) and rates[55] == pytest.approx(0.05, rel=1e-6)
    assert rates[-1] == pytest.approx(0.1 * (1 - math.cos(math.pi / 90)) / 2, rel=1e-6)
    poly = _learning_rates("poly", 50, 0, poly_power=0.9)
    assert all(rate == pytest.approx(0.1 * (1 - step / 50) ** 0.9, rel=1e-6) for step, rate in enumerate(poly))
    step = _learning_rates("step", 50, 0, lr_step_epochs=2, lr_gamma=0.5)  # every 2 epochs of 10 steps
    assert step[19] == pytest.approx(0.1) and step[20] == pytest.approx(0.05) and step[40] == pytest.approx(0.025)
    assert set(_learning_rates("constant", 20, 0)) == {0.1}


def test_one_image_per_step_under_a_pooled_batch_norm_is_one_line(tmp_path, capsys):
    """The embedding head's batch norm follows global pooling, as DeepLabv3's image pooling: one image per step is
    refused before training, naming the settings that fix it."""
    settings = [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25, embedding_dim: 8}",
        "data.batch_size=1",
        f"data.synth_dir={tmp_path / 'data'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.accelerator=cpu",
        *TINY_IMAGE_DATA["embed"],
    ]
    assert main(["train", "--task", "embed", *[a for s in settings for a in ("--set", s)]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "data.batch_size" in lines[0] and "train.sync_batchnorm" in lines[0]
