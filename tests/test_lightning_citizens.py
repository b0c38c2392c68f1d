"""mbtasks' LightningModules and DataModules in a user's own Lightning: built by `mbtasks.from_recipe`, trained by a
plain `pl.Trainer` under each of its flags that cut or move validation, made by LightningCLI from YAML, rebuilt by
`load_from_checkpoint`; and `mbtasks evaluate` scoring the whole set whatever limits the training recipe held."""

import contextlib
import io
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import TINY_IMAGE_DATA
from pytorch_lightning.callbacks import Callback

import mbtasks
from mbtasks.cli import main
from mbtasks.config import apply_override, load_config
from mbtasks.tasks import TASKS
from mbtasks.tasks.build import recipe_assignments

# Per task, the smallest network and data that train: `--set` settings, given to from_recipe as nested overrides.
TINY = {
    "det": [
        "model.name=ssdlite320_mobilenet_v3_small",
        "model.options={width_mult: 0.25}",
        "data.size=64",
        "data.synth={seed: 1, num_train: 4, num_val: 4, image_size: 64}",
        "data.batch_size=2",
        "data.val_batch_size=2",
    ],
    "seg": [
        "model.name=lraspp_mobilenet_v3_small",
        "model.options={width_mult: 0.25}",
        "data.size=[32, 64]",
        "data.synth={seed: 1, num_train: 4, num_val: 4, size: [32, 64]}",
        "data.batch_size=2",
        "data.val_batch_size=2",
    ],
    **{
        task: ["model.name=mobilenet_v1", "model.options={width_mult: 0.25}", *TINY_IMAGE_DATA[task]]
        for task in ("attr", "embed", "cls")
    },
}
IMAGE_BATCHES = {"attr": (4, 2), "embed": (4, 32), "cls": (4, 5)}  # (training, validation) batch sizes
# What every run here shares: a user's quiet trainer, one or two training steps an epoch, no sanity check unless a
# flag asks for one.
QUIET = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    max_epochs=1,
    limit_train_batches=2,
    num_sanity_val_steps=0,
)
# flag -> (the trainer's settings, the validations it runs: "whole", "part" (its first batch), "sanity part")
FLAGS = {
    "fast_dev_run": ({"fast_dev_run": True}, ["part"]),
    "limit_train_batches": ({"limit_train_batches": 1}, ["whole"]),
    "limit_val_batches": ({"limit_val_batches": 1}, ["part"]),
    "overfit_batches": ({"overfit_batches": 1}, ["part"]),
    "max_steps": ({"max_steps": 1, "max_epochs": -1}, []),  # stops mid-epoch, before the epoch's validation
    "val_check_interval": ({"val_check_interval": 0.5}, ["whole", "whole"]),  # after each of the 2 batches
    "check_val_every_n_epoch": ({"check_val_every_n_epoch": 2, "max_epochs": 2, "limit_train_batches": 1}, ["whole"]),
    "num_sanity_val_steps": ({"num_sanity_val_steps": 1}, ["sanity part", "whole"]),
}


def tiny_overrides(task: str, folder: Path) -> dict:
    """The task's TINY settings as from_recipe's nested keyword arguments."""
    overrides: dict = {}
    settings = [*TINY[task], f"data.synth_dir={folder}", "data.num_workers=0", "train.warmup_epochs=0"]
    if task in IMAGE_BATCHES:
        settings += [f"data.batch_size={IMAGE_BATCHES[task][0]}", f"data.val_batch_size={IMAGE_BATCHES[task][1]}"]
    for setting in settings:
        apply_override(overrides, setting)
    return overrides


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """task -> (its module, its data module) from its demo recipe made tiny, built once for every run here."""
    made: dict = {}

    def get(task: str):
        if task not in made:
            folder = tmp_path_factory.mktemp(f"{task}_data")
            made[task] = mbtasks.from_recipe(TASKS.get(task).demo_recipe, **tiny_overrides(task, folder))
        return made[task]

    return get


class Validations(Callback):
    """What each validation scored: ("sanity part" | "whole" | "part", images scored, images of the set)."""

    def __init__(self):
        self.seen: list[tuple[str, int, int]] = []

    def on_validation_end(self, trainer, module) -> None:
        kind = "whole" if module.validated_whole_set else "part"
        self.seen.append(
            ("sanity " + kind if trainer.sanity_checking else kind, module.evaluated_images, module.validation_images)
        )


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("task", TINY)
def test_each_trainer_flag_scores_the_images_its_validations_see(task, flag, built):
    module, data = built(task)
    fresh = type(module)(**module.hparams)  # a new network from the hyper-parameters, for each run
    settings, expected = FLAGS[flag]
    validations = Validations()
    trainer = pl.Trainer(**{**QUIET, **settings}, callbacks=[validations])
    trainer.fit(fresh, datamodule=data)

    images, first_batch = len(data.val_set), data.config.data.val_batch_size
    assert first_batch < images  # so that one batch is part of the set
    scored = {"whole": images, "part": first_batch, "sanity part": first_batch}
    assert validations.seen == [(kind, scored[kind], images) for kind in expected]
    if expected:
        assert trainer.callback_metrics["val/images"].item() == scored[expected[-1]]


def test_a_whole_validation_still_counts_every_image_once(built):
    module, _ = built("cls")
    module.validated_whole_set, module.validation_images = True, 9
    assert module.missing_images({0: None, 1: None}) == "scored 2 of the 9 validation images"
    module.validated_whole_set = False
    assert module.missing_images({0: None, 1: None}) == ""


def _outputs(value) -> list[torch.Tensor]:
    """A task's predictions (arrays, tensors, dicts and lists of them) as a flat list of tensors."""
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _outputs(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _outputs(item)]
    return [torch.as_tensor(value)]


@pytest.mark.parametrize("task", TINY)
def test_a_checkpoint_loads_back_into_the_module_and_data_module_that_saved_it(task, built, tmp_path):
    module, data = built(task)
    trained = type(module)(**module.hparams)
    trainer = pl.Trainer(**{**QUIET, "limit_val_batches": 1}, default_root_dir=tmp_path)
    trainer.fit(trained, datamodule=data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    loaded = type(module).load_from_checkpoint(tmp_path / "run.ckpt", weights_only=True)
    assert (loaded.class_names, loaded.category_ids) == (trained.class_names, trained.category_ids)
    assert loaded.hparams["config"]["model"]["weights"] is None  # rebuilt from the checkpoint, not a weights file
    inputs = [data.graph_inputs("val")[i] for i in range(2)]
    with torch.no_grad():
        want, got = trained.eval().predict_inputs(inputs), loaded.eval().predict_inputs(inputs)
    for a, b in zip(_outputs(want), _outputs(got), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    # mbtasks.load of the same file: the same network and weights, so the same answers
    by_load = mbtasks.load(tmp_path / "run.ckpt").model
    want_state, got_state = loaded.model.state_dict(), by_load.state_dict()
    assert got_state.keys() == want_state.keys()
    assert all(torch.equal(v, want_state[k]) for k, v in got_state.items())
    with torch.no_grad():
        direct = loaded.model(torch.stack(inputs)) if task != "det" else loaded.model(inputs)
        through_load = by_load(torch.stack(inputs)) if task != "det" else by_load(inputs)
    for a, b in zip(_outputs(direct), _outputs(through_load), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)

    rebuilt = type(data).load_from_checkpoint(tmp_path / "run.ckpt", weights_only=True)
    assert rebuilt.config == data.config
    rebuilt.setup("validate")
    assert rebuilt.class_names == data.class_names


def test_lightning_cli_makes_the_task_and_its_data_from_yaml(tmp_path):
    """Plain dicts in the YAML: the data module's recipe, and the task's without classes, built for the data's."""
    synth = {"seed": 1, "num_classes": 3, "train_per_class": 4, "val_per_class": 3, "size": 32}
    recipe = {
        "seed_everything": 0,
        "trainer": {**QUIET, "limit_train_batches": 1, "default_root_dir": str(tmp_path)},
        "model": {
            "class_path": "mbtasks.tasks.classification.ClassificationTask",
            "init_args": {
                "config": {
                    "model": {"name": "mobilenet_v1", "options": {"width_mult": 0.25}},
                    "train": {"optimizer": "sgd", "lr": 0.01, "warmup_epochs": 0},
                }
            },
        },
        "data": {
            "class_path": "mbtasks.tasks.classification.ClassificationDataModule",
            "init_args": {
                "config": {
                    "data": {
                        "synth_dir": str(tmp_path / "data"),
                        "synth": synth,
                        "size": 32,
                        "batch_size": 4,
                        "val_batch_size": 5,
                        "num_workers": 0,
                    }
                }
            },
        },
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(recipe))
    from pytorch_lightning.cli import LightningCLI

    cli = LightningCLI(args=["fit", "--config", str(path)], save_config_callback=None)
    task, data = cli.model, cli.datamodule
    assert task.class_names == data.class_names and len(task.class_names) == 3
    assert task.config.data == data.config.data  # what it trained on, in its recipe and checkpoint record
    assert task.hparams["class_names"] == data.class_names  # so load_from_checkpoint builds it at once
    assert cli.trainer.callback_metrics["val/images"].item() == 9


def test_from_recipe_overrides_are_the_set_assignments_of_the_command_line(tmp_path):
    overrides = {"data": {"batch_size": 8, "size": [64, 128], "synth_dir": tmp_path}, "train": {"lr": 1e-5}}
    assignments = recipe_assignments({**overrides, "model": {"options": {}}})
    config = load_config("seg_cityscapes_synth", assignments)
    assert (config.data.batch_size, config.data.size, config.data.synth_dir) == (8, [64, 128], str(tmp_path))
    assert config.train.lr == 1e-5 and config.model.options == {}
    assert config.data.synth["num_val"] == 60  # nested keys replace the recipe's one by one


def _run(*args: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(list(args)) == 0
    return printed.getvalue()


def test_evaluate_scores_every_image_whatever_limit_the_training_recipe_held(tmp_path):
    settings = [
        *TINY["cls"],
        f"data.synth_dir={tmp_path / 'data'}",
        f"train.out_dir={tmp_path / 'run'}",
        "data.num_workers=0",
        "data.val_batch_size=5",
        "train.accelerator=cpu",
        "train.epochs=1",
        "train.limit_train_batches=1",
        "train.limit_val_batches=1",
        "train.loggers=[csv]",
        "train.progress_bar=false",
    ]
    trained = _run("train", "--task", "cls", *[a for s in settings for a in ("--set", s)])
    assert " on 5 of the 9 images (train.limit_val_batches=1): " in trained  # the recipe's own limit, said
    best = str(tmp_path / "run/checkpoints/best.ckpt")
    assert "evaluated 9 images\n" in _run("evaluate", "--checkpoint", best)
    limited = _run("evaluate", "--checkpoint", best, "--set", "train.limit_val_batches=1")
    assert "evaluated 5 of the 9 images (train.limit_val_batches=1)" in limited  # asked for on the command line
