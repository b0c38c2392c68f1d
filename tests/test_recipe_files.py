"""Recipes by name: the packaged recipes found by their stems, bases merged deeply (the COCO detection recipes over
their base resolve to the stand-alone recipes they replaced), several --config merged in order, --print-config,
`mbtasks recipes`, and one-line errors for a name's typo, a missing base and a circle of bases."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import write_checkpoint

from mbtasks import recipe_files
from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.errors import MbtasksError
from mbtasks.recipe_files import PACKAGED, find_recipe, packaged_recipes, read_recipe, recipe_listing, recipe_names

# The five COCO detection recipes as they were before they extended coco_detection_base (git: configs/det/).
STANDALONE = Path(__file__).with_name("data") / "standalone_coco_recipes"
COCO = sorted(path.stem for path in STANDALONE.glob("*.yaml"))


def test_every_packaged_recipe_is_found_by_a_name_of_its_own_and_says_what_it_reproduces():
    files = sorted(PACKAGED.rglob("*.yaml"))
    assert len(files) == len(packaged_recipes()) == len({path.stem for path in files})  # no name twice
    assert {path.parent.name for path in files} == {"demo", "det", "seg", "face", "cls"}
    for name in recipe_names():
        assert find_recipe(name) == packaged_recipes()[name]
        description = load_config(name).description
        assert description and "\n" not in description, name


def test_a_name_twice_among_the_packaged_recipes_is_refused(tmp_path, monkeypatch):
    for folder in ("det", "seg"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.yaml").write_text("task: det\n")
    monkeypatch.setattr(recipe_files, "PACKAGED", tmp_path)
    with pytest.raises(MbtasksError, match="two packaged recipes are named same"):
        recipe_files.find_recipe("same")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("det_shapes").write_text("task: seg\n")
    assert find_recipe("det_shapes") == Path("det_shapes") and load_config("det_shapes").task == "seg"
    assert load_config(str(PACKAGED / "demo" / "det_shapes.yaml")).task == "det"


@pytest.mark.parametrize("name", COCO)
def test_a_coco_recipe_over_its_base_resolves_to_the_stand_alone_recipe_it_replaced(name):
    own = yaml.safe_load(find_recipe(name).read_text())
    assert own["base"] == "coco_detection_base" and "optimizer" not in own["train"]  # only its differences
    resolved = read_recipe(name)
    description = resolved.pop("description")
    assert resolved == yaml.safe_load((STANDALONE / f"{name}.yaml").read_text())
    assert description.startswith(("SSD300", "SSDLite320")) and "COCO" in description


def _write(folder: Path, name: str, values: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_bases_merge_mappings_key_by_key_and_replace_lists_and_scalars(tmp_path):
    _write(tmp_path, "grand", {"task": "cls", "train": {"lr": 0.5, "epochs": 3, "loggers": ["csv", "tensorboard"]}})
    _write(tmp_path, "parent", {"base": "grand.yaml", "model": {"options": {"width_mult": 0.5, "dropout": 0.1}}})
    child = _write(
        tmp_path,
        "child",
        {"base": "parent.yaml", "model": {"options": {"dropout": 0.3}}, "train": {"lr": 0.1, "loggers": ["csv"]}},
    )
    assert read_recipe(child) == {
        "task": "cls",
        "model": {"options": {"width_mult": 0.5, "dropout": 0.3}},
        "train": {"lr": 0.1, "epochs": 3, "loggers": ["csv"]},
    }
    # a packaged base by name, from a recipe anywhere
    mine = _write(tmp_path, "mine", {"base": "ssdlite320_mobilenet_v3_large_coco", "data": {"batch_size": 4}})
    config = load_config(mine)
    assert (config.data.batch_size, config.data.val_batch_size, config.train.lr) == (4, 32, 0.15)


def _one_line_error(*args) -> str:
    with pytest.raises(MbtasksError) as error:
        load_config(*args)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_circle_of_bases_a_missing_base_and_a_mistyped_name_are_one_line(tmp_path):
    _write(tmp_path, "a", {"base": "b.yaml", "task": "det"})
    _write(tmp_path, "b", {"base": "a.yaml"})
    assert "recipes extend each other in a circle (a -> b -> a)" in _one_line_error(tmp_path / "a.yaml")
    missing = _write(tmp_path, "c", {"base": "coco_detection_bse", "task": "det"})
    assert _one_line_error(missing) == (
        f"{missing}: base coco_detection_bse: no such recipe file or packaged recipe "
        "(did you mean coco_detection_base?)"
    )
    assert _one_line_error("det_shape").startswith(
        "det_shape: no such recipe file, and no packaged recipe of that name (did you mean det_shapes"
    )
    # an old path from before the recipes moved into the package names the recipe it meant
    assert "(did you mean det_shapes" in _one_line_error("configs/demo/det_shapes.yaml")


def test_a_mistyped_recipe_name_on_the_command_line_is_one_line(capsys):
    assert main(["train", "--config", "seg_cityscape_synth"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mbtasks: error: seg_cityscape_synth: no such recipe file") and error.count("\n") == 1
    assert "did you mean seg_cityscapes_synth" in error


def test_several_configs_merge_in_order_and_set_goes_on_top(tmp_path, capsys):
    faster = _write(tmp_path, "faster", {"train": {"lr": 0.3, "epochs": 2}, "data": {"size": 160}})
    shorter = _write(tmp_path, "shorter", {"train": {"epochs": 1}})
    config = load_config(["det_shapes", faster, shorter], ["train.lr=0.2"])
    assert (config.train.lr, config.train.epochs, config.data.size, config.data.batch_size) == (0.2, 1, 160, 32)
    sets = ["--config", "det_shapes", "--config", str(faster), "--config", str(shorter), "--set", "train.lr=0.2"]
    assert main(["train", *sets, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == config.to_dict()


def test_print_config_round_trips_through_load_config_for_every_command(tmp_path, capsys):
    printed = tmp_path / "printed.yaml"
    checkpoint = write_checkpoint(tmp_path / "cls.ckpt", "cls", ["a", "b"])
    recipe = ["--config", "ssd300_mobilenet_v1_coco", "--set", "data.batch_size=4"]
    commands = {
        "train": ["train", *recipe],
        "evaluate": ["evaluate", *recipe],
        "ablate": ["ablate", *recipe],
        "export": ["export", *recipe, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "never.onnx")],
    }
    expected = load_config("ssd300_mobilenet_v1_coco", ["data.batch_size=4"])
    # export runs a checkpoint (the --config recipe's here) on the machine at hand: one device
    at_hand = expected.to_dict()
    at_hand["train"].update(accelerator="auto", devices=1, strategy="auto", num_nodes=1)
    for command, args in commands.items():
        assert main([*args, "--print-config"]) == 0, command
        printed.write_text(capsys.readouterr().out)
        assert load_config(printed) == (load_config(None, base=at_hand) if command == "export" else expected), command
    assert not (tmp_path / "never.onnx").exists()
    # a checkpoint without --config: its own recipe, on the machine at hand
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["task"] == "cls" and config["model"]["options"]["width_mult"] == 0.5
    assert config["train"]["devices"] == 1 and config["train"]["accelerator"] == "auto"
    # ablate with no --config: the task's demo recipe
    assert main(["ablate", "--task", "seg", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_config("seg_cityscapes_synth").to_dict()


def test_recipes_lists_every_packaged_recipe_with_its_facts(capsys):
    assert main(["recipes", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert list(listed) == recipe_names()
    assert listed["coco_detection_base"]["is_base"] and listed["coco_detection_base"]["model"] == ""
    assert listed["ssd300_mobilenet_v1_coco"]["extends"] == "coco_detection_base"
    assert {name for name, entry in listed.items() if entry["is_base"]} == {"coco_detection_base"}
    yolo = listed["det_yolo"]
    assert (yolo["task"], yolo["model"], yolo["data_format"], yolo["data_root"]) == (
        "det",
        "ssdlite320_mobilenet_v3_small",
        "yolo",
        None,
    )
    assert listed["ssdlite320_mobilenet_v3_large_coco"]["data_root"] == "data/coco"  # from its base
    assert main(["recipes", "--task", "seg"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "task", "model", "data", "description"]
    assert [line.split()[0] for line in table[1:]] == [e.name for e in recipe_listing() if e.task == "seg"]
    assert any(line.startswith("seg_folder ") and "embedded (folder)" in line for line in table)
