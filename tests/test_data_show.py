"""`mbtasks data show`: a recipe's training samples drawn as the training loop sees them, and its validation
samples as evaluation does, for the detection, segmentation and face recipes (tiny embedded sets)."""

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_DATA, TINY_MODELS
from PIL import Image

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.drawing import class_colours
from mbtasks.tasks.build import build_task_and_data

SETTINGS = {
    "det_shapes": [*TINY_MODELS["det"], "data.synth={seed: 1, num_train: 6, num_val: 4, image_size: 96}"],
    "seg_cityscapes_synth": [
        *TINY_MODELS["seg"],
        "data.synth={seed: 1, num_train: 4, num_val: 4, size: [64, 128]}",
        "data.size=[64, 128]",
    ],
    "attr_faces": TINY_IMAGE_DATA["attr"],
}


def _settings(recipe: str, tmp_path) -> list[str]:
    return [*SETTINGS[recipe], f"data.synth_dir={tmp_path / 'data'}", "data.num_workers=0", "data.batch_size=2"]


@pytest.mark.parametrize("recipe", list(SETTINGS))
def test_data_show_writes_grids_of_drawn_training_and_validation_samples(recipe, tmp_path, capsys):
    command = ["data", "show", "--config", recipe, "--n", "3", "--out", str(tmp_path / "show")]
    assert main(command + [a for s in _settings(recipe, tmp_path) for a in ("--set", s)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'show/train.png'}: 3 train samples, augmented as epoch 0 of training",
        f"wrote {tmp_path / 'show/val.png'}: 3 val samples, as evaluation reads them",
    ]
    task, data = build_task_and_data(load_config(recipe, _settings(recipe, tmp_path)))
    for sheet in ("train.png", "val.png"):
        grid = np.asarray(Image.open(tmp_path / "show" / sheet))
        assert grid.ndim == 3 and min(grid.shape[:2]) >= 2 * 256  # 2 x 2 cells, small samples enlarged
        if recipe == "det_shapes":  # the boxes in their classes' colours
            colours = class_colours(len(task.class_names))[1:]
            assert sum((grid == colour).all(-1).sum() > 50 for colour in colours) >= 2
        if recipe == "seg_cityscapes_synth":  # the legend's swatches in the data set's colours
            assert (grid == task.format.palette()[0]).all(-1).sum() > 50
    assert main(command) == 2  # its sheets are not replaced unless asked
    assert "pass --overwrite" in capsys.readouterr().err


def test_the_samples_shown_are_the_training_loaders_first(tmp_path):
    """data show reads the training set through the data module's augmented_train_set and training_order, as the
    training loader does: the first sample shown is the loader's first, augmented alike."""
    task, data = build_task_and_data(load_config("det_shapes", _settings("det_shapes", tmp_path)))
    images, targets = next(iter(data.train_dataloader()))
    image, target = data.augmented_train_set()[next(data.training_order(epoch=0))]
    assert np.array_equal(images[0].numpy(), image)
    assert torch.equal(targets[0]["boxes"], target["boxes"])
    picture, truth = data.sample_for_drawing((image, target), zoom=2)
    assert picture.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
    assert np.allclose(truth["boxes"], 2 * target["boxes"].numpy())


def test_data_show_without_a_recipe_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "show", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mbtasks: error: data show needs --config (a recipe), or --task for its demo recipe"
    ]
